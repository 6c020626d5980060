#!/usr/bin/env python3
"""Build small byte-level BPE tokenizers with HF `tokenizers` and record what HF does with them.

Usage:
    /opt/ref/py scripts/make_tokenizer_goldens.py [--out tests/data/tokenizer]
                                                  [--extra NAME=DIR ...]

Runs on the CPU in seconds; needs only the `tokenizers` package (transformers is not used, but its
version is recorded when present). Writes, under --out:

  deepseek_style/tokenizer.json  DeepSeek-V3's tokenizer.json layout: normalizer Sequence([]);
        pre_tokenizer Sequence[Split \\p{N}{1,3}, Split [一-龥぀-ゟ゠-ヿ]+, Split <DeepSeek-V3's
        letters / punctuation pattern>, ByteLevel(add_prefix_space=False, use_regex=False)], all
        Splits Isolated; BPE with merges written as "a b" strings (the legacy format); added tokens
        after the vocab: <｜begin▁of▁sentence｜>, <｜end▁of▁sentence｜>, <｜User｜>, <｜Assistant｜>
        (special) and <think>, </think> (not special); TemplateProcessing prepending
        <｜begin▁of▁sentence｜>; ByteLevel decoder.
  glm_style/tokenizer.json       GLM-4 / GLM-5's layout: normalizer null; pre_tokenizer Sequence[
        Split <GLM-4 pattern> Isolated, ByteLevel(add_prefix_space=False, use_regex=False)]; BPE with
        ignore_merges and merges as [a, b] pairs; special tokens <|endoftext|>, [MASK], [gMASK],
        [sMASK], <sop>, <eop>, <|system|>, <|user|>, <|assistant|>, <|observation|>;
        post_processor Sequence[ByteLevel, TemplateProcessing "[gMASK] <sop> $A"].
  gpt2_style/tokenizer.json      ByteLevel(add_prefix_space=True, use_regex=True) alone (the GPT-2
        regex), RobertaProcessing, added tokens with lstrip / rstrip / single_word, one not special.
  splits_style/tokenizer.json    every Split behavior, invert, a String pattern and Digits
        (individual), before ByteLevel(use_regex=False).
  unk_style/tokenizer.json       BPE on raw characters (no ByteLevel), unk_token + fuse_unk,
        Digits(individual_digits=False), no decoder (tokens joined by spaces).
  cases.jsonl  first line {"meta": {...versions...}}, then one line per case:
        {"tokenizer", "text", "ids" (encode without specials), "ids_special" (with), "tokens",
         "decoded" (decode(ids)), "decoded_skip" (decode(ids_special, skip_special_tokens=True)),
         "decoded_half" (decode(ids[:len(ids)//2]), which may cut a UTF-8 character)}.

The two model-like tokenizers are trained (vocab 2000) on local text: /usr/share/common-licenses,
a few /usr/include headers, a few Python standard-library modules and a short multilingual passage
written into this script. The three feature tokenizers share a 400-token vocab. Each file stays
well under 300 KB. Goldens are always computed from the files as written (re-loaded from disk).

--unicode-delta PATH writes src/io/tokenizer_unicode_delta.h instead (and nothing else): the code
points this Python's unicodedata calls unassigned (Unicode 14.0.0 for /opt/ref/py, the same version
as PCRE2 10.42's tables) that HF's regex engine assigns (Unicode 16.0.0 in tokenizers 0.23), with
the general category HF gives them, found by matching each \p{Xx} with HF over all of them. The
tokenizer adds these ranges to the \p{..} classes of tokenizer.json patterns, so new emoji and
CJK extension characters split as in HF.

Model tokenizers: every models/<name>/tokenizer.json of the repository (found from this script's
location) also gets cases, under the tokenizer name <name>; --extra NAME=DIR adds any other
DIR/tokenizer.json. These files are read, never modified; their cases use the texts of the two
model-like tokenizers plus the first special tokens the file declares. To test one, add its NAME
and directory to the list in tokenizer_dirs() in tests/test_tokenizer.cpp (one line).
"""
import argparse
import glob
import json
import os
import platform
import sys

import tokenizers
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

DEEPSEEK_DIGITS = r"\p{N}{1,3}"
DEEPSEEK_CJK = r"[一-龥぀-ゟ゠-ヿ]+"
DEEPSEEK_MAIN = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|"
                 r" ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GLM_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

DS_BOS = "<｜begin▁of▁sentence｜>"
DS_EOS = "<｜end▁of▁sentence｜>"
DS_USER = "<｜User｜>"
DS_ASSISTANT = "<｜Assistant｜>"

MULTILINGUAL = """
人工智能正在改变世界。我们使用稀疏注意力来加速长上下文推理。这是一个中文句子，用于训练分词器。
今天天气很好，我们去公园散步吧。模型的每一层都有一个索引器，用来选择最重要的词元。
日本語の文章です。ひらがなとカタカナとかんじをまぜてかきます。トークナイザーのテストをしています。
東京は日本の首都です。コンピューターとソフトウェアとデータベース。
Ελληνικά: η γρήγορη καφέ αλεπού. Русский: быстрая коричневая лиса прыгает через ленивую собаку.
Français: le café est déjà prêt, très bien. Deutsch: Größe, Übung, schön. Español: año, niño, ¿qué?
"""

SHARED_TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "   leading and trailing spaces   ",
    "multiple    spaces\tand\ttabs",
    "line one\nline two\n\n\nline five",
    "windows\r\nline endings\r\n",
    "trailing newline\n",
    "    \n    \n",
    "\t\t\tindented\n\t\t",
    "I'm sure you'll see it's what they've said, we'd agree.",
    "DON'T SHOUT, IT'S RUDE. We'RE fine'S",
    "rock 'n' roll ' quotes '' and x'ſ y",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "def f(x):\n    if x > 0:\n        return x ** 2\n    return -x  # comment\n",
    "#include <stdio.h>\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "中文测试：你好，世界！人工智能正在改变世界。",
    "日本語のテキストとカタカナ、ひらがな。東京は日本の首都です。",
    "한국어 텍스트와 조합",
    "Mixed 中英文 text with 日本語 and English, 2024年12月31日.",
    "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 ❤️ 🇺🇸",
    "👩🏾‍💻 coding at 3am ☕",
    "Unicode 15-16: shaking 🫨_face, pink 🩷! goose🪿 ext-H 𱍐𱍑 ext-I 𮯰 Garay 𐵐",
    "1234567890",
    "3.14159 2.71828 -0.5 1e-10 1,000,000",
    "Numbers: 12 345 6789 00001 ٣٤٥ ½",
    "Ünïcödé àccents café naïve résumé",
    "Ελληνικά και русский текст",
    "العربية עברית",
    "math: ∑ x² ≤ ∞ ± √2 ≠ π",
    "URL: https://example.com/path?q=1&r=two#frag",
    "email@example.com, user_name-123",
    "$$$ !!! ??? ... --- ___ ***",
    "\u00a0non-breaking\u00a0space and\u3000ideographic space",
    "zero\u200bwidth and joiner\u200d test, a\u180eb mongolian",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "Tab\tseparated\tvalues\n1\t2\t3\n",
    "Control chars: \x00\x01\x1b[0m\x7f end",
]

FEATURE_TEXTS = [
    "Hello world, hello WORLD!",
    "",
    "  two  spaces  ",
    "a-b--c---d::e::::f",
    "CamelCaseWordsHere and snake_case",
    "digits 12345 and 3.5 and ٣٤",
    "x <mask> y <mask>z [SW] w[SW] [SW]x <R>   after",
    "new letters: \U0002EBF0[SW] \u1C89[SW] \u0897[SW] [SW]\U0001FAE8 [SW]",
    "it's <s>inside</s> text",
    "中文 and 日本語 😀",
    "line\nbreak\r\n\ttab",
]

LONG_LICENSE_LINES = 12


def corpus_files():
    files = sorted(glob.glob("/usr/share/common-licenses/*"))
    files = [f for f in files if os.path.isfile(f)]
    for h in ["stdio.h", "stdlib.h", "string.h", "math.h", "pthread.h", "unistd.h", "fcntl.h"]:
        p = os.path.join("/usr/include", h)
        if os.path.isfile(p):
            files.append(p)
    pylib = "/usr/lib/python3.11"
    for m in ["argparse.py", "json/__init__.py", "textwrap.py", "heapq.py", "bisect.py"]:
        p = os.path.join(pylib, m)
        if os.path.isfile(p):
            files.append(p)
    return files


def corpus_lines():
    lines = []
    for f in corpus_files():
        with open(f, encoding="utf-8", errors="replace") as fh:
            lines.extend(fh.read().splitlines(keepends=True))
    lines.extend(MULTILINGUAL.splitlines(keepends=True) * 20)
    return lines


def license_paragraph():
    with open("/usr/share/common-licenses/Apache-2.0", encoding="utf-8") as fh:
        lines = fh.read().splitlines(keepends=True)
    return "".join(lines[60:60 + LONG_LICENSE_LINES])


def train(pre_tokenizer, vocab_size, byte_level=True, unk=None):
    model = models.BPE(unk_token=unk, fuse_unk=unk is not None) if unk else models.BPE()
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizer
    kwargs = dict(vocab_size=vocab_size, min_frequency=2, show_progress=False)
    if byte_level:
        kwargs["initial_alphabet"] = pre_tokenizers.ByteLevel.alphabet()
    if unk:
        kwargs["special_tokens"] = [unk]
    tok.train_from_iterator(corpus_lines(), trainers.BpeTrainer(**kwargs))
    return tok


def template(tok, single, specials):
    return processors.TemplateProcessing(
        single=single, special_tokens=[(s, tok.token_to_id(s)) for s in specials])


def write(tok, out_dir, name, edit=None):
    """Saves `tok`, applies `edit` to the JSON, and returns the tokenizer re-loaded from disk."""
    data = json.loads(tok.to_str())
    if edit:
        edit(data)
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    size = os.path.getsize(path)
    assert size < 300_000, f"{path} is {size} bytes"
    print(f"wrote {path} ({size} bytes, vocab {tok.get_vocab_size()})")
    return Tokenizer.from_file(path)


def merges_as_strings(data):
    data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                               for m in data["model"]["merges"]]


def build_deepseek(out_dir):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(DEEPSEEK_DIGITS), "isolated"),
        pre_tokenizers.Split(Regex(DEEPSEEK_CJK), "isolated"),
        pre_tokenizers.Split(Regex(DEEPSEEK_MAIN), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok = train(pre, 2000)
    tok.normalizer = normalizers.Sequence([])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in [DS_BOS, DS_EOS, DS_USER, DS_ASSISTANT]])
    tok.add_tokens([AddedToken("<think>", special=False, normalized=True),
                    AddedToken("</think>", special=False, normalized=True)])
    tok.post_processor = template(tok, f"{DS_BOS} $A", [DS_BOS])
    return write(tok, out_dir, "deepseek_style", merges_as_strings)


def build_glm(out_dir):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM_PATTERN), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok = train(pre, 2000)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
                "<|user|>", "<|assistant|>", "<|observation|>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        template(tok, "[gMASK] <sop> $A", ["[gMASK]", "<sop>"]),
    ])

    def edit(data):
        data["normalizer"] = None
        data["model"]["ignore_merges"] = True
        assert all(isinstance(m, list) for m in data["model"]["merges"])
    return write(tok, out_dir, "glm_style", edit)


def build_features(out_dir):
    base = train(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), 400)
    base.decoder = decoders.ByteLevel()
    base_json = base.to_str()

    # GPT-2 style: ByteLevel alone with the GPT-2 regex and a prefix space; RoBERTa wrapping.
    tok = Tokenizer.from_str(base_json)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.add_special_tokens([AddedToken("<s>", special=True, normalized=False),
                            AddedToken("</s>", special=True, normalized=False),
                            AddedToken("<mask>", special=True, lstrip=True, normalized=False)])
    tok.add_tokens([AddedToken("[SW]", single_word=True, normalized=True),
                    AddedToken("<R>", rstrip=True, special=True, normalized=False)])
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    gpt2 = write(tok, out_dir, "gpt2_style")

    # Every Split behavior, invert, a String pattern, individual Digits.
    tok = Tokenizer.from_str(base_json)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split("::", "removed"),
        pre_tokenizers.Split(Regex(r"-+"), "contiguous"),
        pre_tokenizers.Split(Regex(r"\s+"), "merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[A-Z]"), "merged_with_next"),
        pre_tokenizers.Split(Regex(r"[aeiou]+"), "merged_with_previous", invert=True),
        pre_tokenizers.Split(Regex(r"_"), "isolated", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    splits = write(tok, out_dir, "splits_style")

    # Raw characters, unk + fuse_unk, contiguous Digits, no decoder.
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\s+"), "removed"),
                                   pre_tokenizers.Digits(individual_digits=False)])
    tok = train(pre, 300, byte_level=False, unk="<unk>")
    unk = write(tok, out_dir, "unk_style")
    return {"gpt2_style": gpt2, "splits_style": splits, "unk_style": unk}


def case(name, tok, text):
    enc = tok.encode(text, add_special_tokens=False)
    ids = enc.ids
    ids_special = tok.encode(text, add_special_tokens=True).ids
    return {
        "tokenizer": name,
        "text": text,
        "ids": ids,
        "ids_special": ids_special,
        "tokens": enc.tokens,
        "decoded": tok.decode(ids, skip_special_tokens=False),
        "decoded_skip": tok.decode(ids_special, skip_special_tokens=True),
        "decoded_half": tok.decode(ids[:len(ids) // 2], skip_special_tokens=False),
    }


def model_texts(specials, chat_prefix, chat_suffix):
    texts = list(SHARED_TEXTS)
    texts.append(license_paragraph())
    if specials:
        texts.append(specials[0] + "Hello" + specials[-1])
        texts.append("a" + specials[0] + "b " + specials[-1] + " c")
        texts.append(specials[0][:-1] + " is not a token, " + specials[0] + specials[0])
    texts.append(chat_prefix + "What is 17 * 24?" + chat_suffix)
    return texts


CATEGORIES = ("Lu Ll Lt Lm Lo Mn Mc Me Nd Nl No Pc Pd Ps Pe Pi Pf Po Sm Sc Sk So Zs Zl Zp Cc Cf "
              "Co").split()


def write_unicode_delta(path):
    import unicodedata
    cands = [cp for cp in range(0x110000)
             if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) == "Cn"]
    text = "".join(chr(c) for c in cands)
    assigned = {}
    for cat in CATEGORIES:
        split = pre_tokenizers.Split(Regex(r"\p{%s}" % cat), "removed", invert=True)
        for _, (a, b) in split.pre_tokenize_str(text):
            for i in range(a, b):
                assert i not in assigned, (hex(cands[i]), cat, assigned[i])
                assigned[i] = cat
    ranges = []
    for i in sorted(assigned):
        cp, cat = cands[i], assigned[i]
        if ranges and ranges[-1][1] == cp - 1 and ranges[-1][2] == cat:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, cat])
    lines = [
        "// Generated by scripts/make_tokenizer_goldens.py --unicode-delta; do not edit.",
        f"// Code points unassigned in Unicode {unicodedata.unidata_version} (the tables of PCRE2"
        " 10.42) that HF",
        f"// tokenizers {tokenizers.__version__}'s regex engine assigns, with their general"
        f" category: {len(assigned)} code points.",
        "#pragma once",
        "",
        "namespace indexcache::tok {",
        "",
        "struct UnicodeDeltaRange {",
        "  char32_t lo, hi;",
        "  char category[3];",
        "};",
        "",
        f'inline constexpr const char* kUnicodeDeltaBase = "{unicodedata.unidata_version}";',
        "inline constexpr UnicodeDeltaRange kUnicodeDelta[] = {",
    ]
    for lo, hi, cat in ranges:
        lines.append(f'    {{0x{lo:05X}, 0x{hi:05X}, "{cat}"}},')
    lines += ["};", "", "}  // namespace indexcache::tok", ""]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {path}: {len(ranges)} ranges, {len(assigned)} code points")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/data/tokenizer")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--unicode-delta", metavar="PATH")
    args = ap.parse_args()
    if args.unicode_delta:
        write_unicode_delta(args.unicode_delta)
        return 0
    os.makedirs(args.out, exist_ok=True)

    cases = []
    ds = build_deepseek(args.out)
    for t in model_texts([DS_BOS, DS_USER, DS_ASSISTANT, DS_EOS], DS_BOS + DS_USER,
                         DS_ASSISTANT) + ["<think>\nreasoning\n</think>\n\nanswer"]:
        cases.append(case("deepseek_style", ds, t))
    glm = build_glm(args.out)
    for t in model_texts(["[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|endoftext|>"],
                         "[gMASK]<sop><|user|>\n", "<|assistant|>\n"):
        cases.append(case("glm_style", glm, t))
    for name, tok in build_features(args.out).items():
        for t in FEATURE_TEXTS + SHARED_TEXTS[10:30:3]:
            cases.append(case(name, tok, t))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    extras = [f"{os.path.basename(os.path.dirname(p))}={os.path.dirname(p)}"
              for p in sorted(glob.glob(os.path.join(repo, "models", "*", "tokenizer.json")))]
    for spec in extras + args.extra:
        name, d = spec.split("=", 1)
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special][:4]
        for t in model_texts(specials, "", ""):
            cases.append(case(name, tok, t))

    try:
        import transformers
        tf_version = transformers.__version__
    except Exception:  # noqa: BLE001 - only recorded
        tf_version = None
    meta = {"tokenizers": tokenizers.__version__, "transformers": tf_version,
            "python": platform.python_version(), "script": "scripts/make_tokenizer_goldens.py"}
    path = os.path.join(args.out, "cases.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"meta": meta}, ensure_ascii=False) + "\n")
        for c in cases:
            fh.write(json.dumps(c, ensure_ascii=False) + "\n")
    counts = {}
    for c in cases:
        counts[c["tokenizer"]] = counts.get(c["tokenizer"], 0) + 1
    print(f"wrote {path}: {counts}; tokenizers {tokenizers.__version__}")


if __name__ == "__main__":
    sys.exit(main())
