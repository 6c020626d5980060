#include "calib/svg.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace indexcache::svg {

namespace {

// Viridis, sampled at 5 stops and interpolated linearly in RGB.
std::string colour(double t) {
  static constexpr std::array<std::array<double, 3>, 5> kStops = {
      {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}}};
  if (!(t >= 0)) t = 0;  // NaN -> 0
  t = std::min(1.0, t) * 4.0;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  auto mix = [&](int c) { return static_cast<int>(std::lround(kStops[i][c] + f * (kStops[i + 1][c] - kStops[i][c]))); };
  return fmt::format("#{:02x}{:02x}{:02x}", mix(0), mix(1), mix(2));
}

std::string num(double v) { return fmt::format("{:.2f}", v); }

// "Nice" tick step (1, 2 or 5 times a power of ten) for about `target` ticks over `range`.
double nice_step(double range, int target) {
  if (!(range > 0)) return 1;
  const double raw = range / target;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * p >= raw) return m * p;
  return 10 * p;
}

std::string tick_label(double v, double step) {
  // Enough decimals to tell ticks apart.
  const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  if (std::abs(v) < step * 1e-6) v = 0;
  return fmt::format("{:.{}f}", v, std::min(decimals, 8));
}

std::string marker_svg(const std::string& kind, double x, double y, const std::string& fill, const std::string& tip) {
  const std::string title = tip.empty() ? "" : "<title>" + escape(tip) + "</title>";
  if (kind == "square")
    return fmt::format(R"~(<rect x="{}" y="{}" width="9" height="9" fill="{}" stroke="#000" stroke-width="0.6">{}</rect>)~",
                       num(x - 4.5), num(y - 4.5), fill, title);
  if (kind == "diamond")
    return fmt::format(R"~(<polygon points="{},{} {},{} {},{} {},{}" fill="{}" stroke="#000" stroke-width="0.6">{}</polygon>)~",
                       num(x), num(y - 6), num(x + 6), num(y), num(x), num(y + 6), num(x - 6), num(y), fill, title);
  return fmt::format(R"~(<circle cx="{}" cy="{}" r="4" fill="{}" stroke="#000" stroke-width="0.6">{}</circle>)~", num(x),
                     num(y), fill, title);
}

}  // namespace

std::string escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string heatmap(const Heatmap& h) {
  const int n = static_cast<int>(h.values.size());
  const double cell = std::clamp(560.0 / std::max(1, n), 8.0, 40.0);
  const double font = std::clamp(cell * 0.7, 7.0, 12.0);
  const int label_every = std::max(1, static_cast<int>(std::ceil((font + 1) / cell)));
  size_t longest = 1;
  for (const auto& l : h.labels) longest = std::max(longest, l.size());
  const double label_w = longest * font * 0.62 + 8;
  const double left = 12 + label_w, top = 44 + label_w;
  const double grid = n * cell;
  const double legend_h = std::max(grid, 160.0);
  const double legend_x = left + grid + 24;
  const double width = std::max(legend_x + 16 + 70, 24 + h.title.size() * 8.6), height = top + legend_h + 24;
  const double span = h.hi > h.lo ? h.hi - h.lo : 1.0;

  std::string o;
  o += fmt::format(
      R"~(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" viewBox="0 0 {} {}" font-family="sans-serif">)~"
      "\n",
      num(width), num(height), num(width), num(height));
  o += fmt::format(R"~(<rect width="100%" height="100%" fill="#fff"/>)~" "\n");
  o += fmt::format(R"~(<text x="{}" y="24" font-size="15" font-weight="bold">{}</text>)~" "\n", num(12), escape(h.title));
  // cells
  o += "<g shape-rendering=\"crispEdges\">\n";
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < static_cast<int>(h.values[i].size()) && j < n; ++j) {
      const double v = h.values[i][j];
      const std::string li = i < static_cast<int>(h.labels.size()) ? h.labels[i] : std::to_string(i);
      const std::string lj = j < static_cast<int>(h.labels.size()) ? h.labels[j] : std::to_string(j);
      o += fmt::format(R"~(<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} / {}: {:.4f}</title></rect>)~",
                       num(left + j * cell), num(top + i * cell), num(cell), num(cell), colour((v - h.lo) / span),
                       escape(li), escape(lj), v);
      if (cell >= 28)
        o += fmt::format(R"~(<text x="{}" y="{}" font-size="{}" text-anchor="middle" fill="{}">{:.2f}</text>)~",
                         num(left + (j + 0.5) * cell), num(top + (i + 0.5) * cell + font * 0.35), num(font * 0.85),
                         (v - h.lo) / span > 0.6 ? "#000" : "#fff", v);
      o += "\n";
    }
  }
  o += "</g>\n";
  // labels: rows on the left, columns above (vertical)
  for (int i = 0; i < n; i += label_every) {
    const std::string l = escape(i < static_cast<int>(h.labels.size()) ? h.labels[i] : std::to_string(i));
    o += fmt::format(R"~(<text x="{}" y="{}" font-size="{}" text-anchor="end">{}</text>)~" "\n", num(left - 4),
                     num(top + (i + 0.5) * cell + font * 0.35), num(font), l);
    const double cx = left + (i + 0.5) * cell + font * 0.35, cy = top - 4;
    o += fmt::format(R"~(<text x="{}" y="{}" font-size="{}" transform="rotate(-90 {} {})">{}</text>)~" "\n", num(cx),
                     num(cy), num(font), num(cx), num(cy), l);
  }
  o += fmt::format(R"~(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333" stroke-width="1"/>)~" "\n",
                   num(left), num(top), num(grid), num(grid));
  // colour scale: top = hi, bottom = lo
  o += R"~(<defs><linearGradient id="scale" x1="0" y1="1" x2="0" y2="0">)~";
  for (int s = 0; s <= 8; ++s)
    o += fmt::format(R"~(<stop offset="{:.3f}" stop-color="{}"/>)~", s / 8.0, colour(s / 8.0));
  o += "</linearGradient></defs>\n";
  o += fmt::format(R"~(<rect x="{}" y="{}" width="16" height="{}" fill="url(#scale)" stroke="#333" stroke-width="0.8"/>)~" "\n",
                   num(legend_x), num(top), num(legend_h));
  for (int s = 0; s <= 4; ++s) {
    const double v = h.lo + span * s / 4.0;
    const double y = top + legend_h * (1.0 - s / 4.0);
    o += fmt::format(R"~(<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#333"/>)~", num(legend_x + 16), num(y),
                     num(legend_x + 20), num(y));
    o += fmt::format(R"~(<text x="{}" y="{}" font-size="11">{:.2f}</text>)~" "\n", num(legend_x + 22), num(y + 4), v);
  }
  if (!h.scale_label.empty()) {
    const double cx = legend_x + 62, cy = top + legend_h / 2;
    o += fmt::format(R"~(<text x="{}" y="{}" font-size="11" text-anchor="middle" transform="rotate(90 {} {})">{}</text>)~" "\n",
                     num(cx), num(cy), num(cx), num(cy), escape(h.scale_label));
  }
  o += "</svg>\n";
  return o;
}

std::string line_chart(const LineChart& c) {
  const double width = 760, height = 460, left = 78, right = 190, top = 44, bottom = 56;
  const double pw = width - left - right, ph = height - top - bottom;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : c.series)
    for (const auto& p : s.points) {
      x0 = std::min(x0, p.x), x1 = std::max(x1, p.x);
      y0 = std::min(y0, p.y), y1 = std::max(y1, p.y);
    }
  if (!(x0 <= x1)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 - x0 < 1e-12) x0 -= 1, x1 += 1;
  if (y1 - y0 < 1e-12 * std::max(1.0, std::abs(y0))) {
    const double d = std::max(1e-3, std::abs(y0) * 0.01);
    y0 -= d, y1 += d;
  }
  const double ypad = (y1 - y0) * 0.06;
  y0 -= ypad, y1 += ypad;
  if (c.integer_x) x0 = std::floor(x0), x1 = std::ceil(x1);
  const double xpad = c.integer_x ? 0.5 : (x1 - x0) * 0.03;
  const double ax0 = x0 - xpad, ax1 = x1 + xpad;
  auto X = [&](double x) { return left + (x - ax0) / (ax1 - ax0) * pw; };
  auto Y = [&](double y) { return top + (1.0 - (y - y0) / (y1 - y0)) * ph; };

  std::string o;
  o += fmt::format(
      R"~(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" viewBox="0 0 {} {}" font-family="sans-serif">)~"
      "\n",
      num(width), num(height), num(width), num(height));
  o += R"~(<rect width="100%" height="100%" fill="#fff"/>)~" "\n";
  o += fmt::format(R"~(<text x="{}" y="26" font-size="15" font-weight="bold">{}</text>)~" "\n", num(left), escape(c.title));
  // grid and ticks
  const double ys = nice_step(y1 - y0, 6);
  for (double v = std::ceil(y0 / ys) * ys; v <= y1 + ys * 1e-9; v += ys) {
    o += fmt::format(R"~(<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#e3e3e3"/>)~", num(left), num(Y(v)), num(left + pw),
                     num(Y(v)));
    o += fmt::format(R"~(<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>)~" "\n", num(left - 6),
                     num(Y(v) + 4), tick_label(v, ys));
  }
  const double xs = c.integer_x ? std::max(1.0, std::ceil((x1 - x0) / 12.0)) : nice_step(x1 - x0, 8);
  for (double v = std::ceil(x0 / xs) * xs; v <= x1 + xs * 1e-9; v += xs) {
    o += fmt::format(R"~(<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#e3e3e3"/>)~", num(X(v)), num(top), num(X(v)),
                     num(top + ph));
    o += fmt::format(R"~(<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>)~" "\n", num(X(v)),
                     num(top + ph + 16), c.integer_x ? fmt::format("{}", static_cast<long long>(std::lround(v))) : tick_label(v, xs));
  }
  o += fmt::format(R"~(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>)~" "\n", num(left), num(top),
                   num(pw), num(ph));
  o += fmt::format(R"~(<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>)~" "\n", num(left + pw / 2),
                   num(height - 14), escape(c.x_label));
  const double ycx = 18, ycy = top + ph / 2;
  o += fmt::format(R"~(<text x="{}" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>)~" "\n",
                   num(ycx), num(ycy), num(ycx), num(ycy), escape(c.y_label));
  // series
  for (const auto& s : c.series) {
    if (s.line && s.points.size() > 1) {
      std::string pts;
      for (const auto& p : s.points) pts += num(X(p.x)) + "," + num(Y(p.y)) + " ";
      o += fmt::format(R"~(<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>)~" "\n", pts, s.colour);
    }
    for (const auto& p : s.points) {
      o += marker_svg(s.marker, X(p.x), Y(p.y), s.colour,
                      s.name + (p.label.empty() ? "" : " " + p.label) + fmt::format(": {:.5g}", p.y));
      if (!p.label.empty())
        o += fmt::format(R"~(<text x="{}" y="{}" font-size="10" fill="#333">{}</text>)~", num(X(p.x) + 7),
                         num(Y(p.y) - 6), escape(p.label));
      o += "\n";
    }
  }
  // legend
  double ly = top + 8;
  for (const auto& s : c.series) {
    const double lx = left + pw + 16;
    if (s.line)
      o += fmt::format(R"~(<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2"/>)~", num(lx), num(ly),
                       num(lx + 22), num(ly), s.colour);
    o += marker_svg(s.marker, lx + 11, ly, s.colour, "");
    o += fmt::format(R"~(<text x="{}" y="{}" font-size="11">{}</text>)~" "\n", num(lx + 30), num(ly + 4), escape(s.name));
    ly += 20;
  }
  o += "</svg>\n";
  return o;
}

}  // namespace indexcache::svg
