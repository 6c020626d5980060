// Small self-contained SVG charts for the reports: a labelled heatmap with a colour scale, and a
// line chart with extra labelled markers. Output is a complete standalone SVG document.
#pragma once

#include <string>
#include <vector>

namespace indexcache::svg {

struct Heatmap {
  std::string title;
  std::vector<std::string> labels;         // one per row / column (e.g. "L0", "L1", ...)
  std::vector<std::vector<double>> values;  // [rows][cols], square, each in [lo, hi]
  double lo = 0.0, hi = 1.0;               // colour scale range
  std::string scale_label;                 // caption of the colour scale
};
std::string heatmap(const Heatmap& h);

struct Point {
  double x = 0, y = 0;
  std::string label;  // shown beside the marker when not empty
};
struct Series {
  std::string name;
  std::vector<Point> points;
  bool line = true;          // join the points
  std::string colour = "#1f77b4";
  std::string marker = "circle";  // "circle" or "square" or "diamond"
};
struct LineChart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  bool integer_x = true;  // x ticks at integers
};
std::string line_chart(const LineChart& c);

// Escapes &, <, >, " for text and attribute values.
std::string escape(const std::string& s);

}  // namespace indexcache::svg
