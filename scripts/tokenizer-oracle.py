#!/usr/bin/env python3
# Reference token ids for the GGUF tokenizer builder (tests/gguf_tokenizer.rs).
#
# Pins: transformers==5.24.0 tokenizers==0.23.3 gguf==0.17.1 sentencepiece==0.2.3 torch==2.15.0
# (transformers' GGUF reader needs torch; nothing here runs a model). CI never runs this script:
# its outputs are committed.
# Run:  scripts/tokenizer-oracle.py            (from the repository root)
# When the pinned packages are not importable, the script creates .venv-tokenizer-oracle/,
# installs the pins there with pip and re-runs itself inside it.
#
# Writes tests/fixtures/tokenizers/:
#   spm-llama.gguf         SentencePiece (`tokenizer.ggml.model = "llama"`): a BPE model with byte
#                          fallback trained here on TRAINING_TEXT with Llama-2's trainer settings,
#                          converted to GGUF metadata the way llama.cpp's convert_hf_to_gguf.py
#                          `_set_vocab_sentencepiece` does, with Llama-2's chat template.
#   spm-noprefix.gguf      the same trainer without the dummy prefix, and
#                          `tokenizer.ggml.add_space_prefix = false`.
#   bpe-smollm2.gguf       byte-level BPE (`gpt2`): SmolLM2's first BPE_MERGES merges and the tokens
#                          they make (plus its control tokens and a few DIGIT_MERGES that make the
#                          digit rules visible), `tokenizer.ggml.pre = "smollm"`. The tests set
#                          other `pre` values on it in memory.
#   expected.json          the ids and decodes every case must reproduce.
#
# Oracles:
#   * SPM: transformers' GGUF loader (AutoTokenizer.from_pretrained(dir, gguf_file=...)) for the
#     vocabulary, merges (rebuilt from scores) and added tokens, with the text handling of
#     Llama-2's own tokenizer.json (normalizer Prepend("▁") + Replace; see llama2_style). Every
#     text without special tokens must give the same ids and decode as the sentencepiece model
#     itself, or the script stops. transformers' loader as is differs (Metaspace "first" drops
#     the prefix before a leading space or after a special token, and it ignores
#     add_space_prefix = false): those ids are recorded as transformers_gguf_disagreements.
#   * gpt2 `pre` values: a `tokenizers` Tokenizer with the pre-tokenizer of that model family's
#     own tokenizer.json (Llama-3, Qwen2, DeepSeek-LLM, Mistral tekken, SmolLM, GPT-2), which is
#     also what llama.cpp runs for the name. transformers' GGUF loader gives the same ids where it
#     knows the `pre` (llama-bpe, qwen2, tekken, gpt2/default); for smollm and deepseek-llm it
#     falls back to GPT-2's split, and those ids are recorded as transformers_gguf_disagreements.
#
# Real vocabularies: tests/gguf_tokenizer.rs also has an opt-in test over llama.cpp's
# models/ggml-vocab-*.gguf with their .inp/.out reference ids (LLAMA_CPP_VOCABS=...).
import json
import os
import subprocess
import sys
import tempfile

PINS = [
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "gguf==0.17.1",
    "sentencepiece==0.2.3",
    "torch==2.15.0",
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
BPE_MERGES = 2500


def ensure_deps():
    try:
        import gguf  # noqa: F401
        import sentencepiece  # noqa: F401
        import tokenizers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        venv = os.path.join(ROOT, ".venv-tokenizer-oracle")
        py = os.path.join(venv, "bin", "python")
        if sys.executable == py:
            raise
        if not os.path.exists(py):
            subprocess.check_call([sys.executable, "-m", "venv", venv])
            subprocess.check_call([py, "-m", "pip", "install", *PINS])
        os.execv(py, [py, *sys.argv])


ensure_deps()

import gguf  # noqa: E402
import sentencepiece as spm  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from tokenizers import AddedToken  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

# ------------------------------------------------------------------ corpus

CORPUS = [
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "two  spaces   three    four",
    "tabs\tand\t\ttabs",
    "new\nline\n\nand\n\n\nmore",
    "windows\r\nline\r\nends\r\n",
    "\n\nstarts with newlines",
    "1 12 123 1234 12345 1234567 3.14159 1,000,000",
    "year 2024, x=42; v1.2.3",
    "it's don't we're they've I'm you'll he'd IT'S DON'T",
    "def add(a, b):\n    return a + b  # sum\n",
    "for (int i = 0; i < n; ++i) { x[i] *= 2; }",
    "Ünïcödé àccents: café, naïve, résumé, Øresund, Straße",
    "日本語のテキストと中文文本",
    "한국어 문장입니다",
    "emoji: 🚀🔥 👍🏽 👨‍👩‍👧",
    "RTL: مرحبا بالعالم and עברית",
    "Ελληνικά και русский текст",
    "mixed: abc123def 456ghi",
    "URL https://example.com/a/b?c=1&d=2",
    "camelCaseWord HTTPServer XMLHttpRequest iPhone aZ",
    "path/to/file // comment\n/* block */",
    "<b>html</b> &amp; {\"json\": [1, 2]}",
    "a",
    " ",
    "",
]

TRAINING_TEXT = """
The quick brown fox jumps over the lazy dog. A tokenizer splits text into pieces that a model
reads as ids. Hello world, hello there, how are you today? I am fine, thank you very much.
It's a nice day; don't you think? We're going to the market, they've already left, I'm staying.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 2024 3.14159 and 1,000,000 items were counted.
def main():
    for i in range(10):
        print(i * 2)  # doubled
    return 0
int add(int a, int b) { return a + b; }
Ünïcödé text with café, naïve, résumé and Straße appears here too.
The model learns from examples. Examples teach the model which pieces are common.
Language models predict the next token given the previous tokens in the sequence.
The weather is sunny and warm, the children play in the park near the river.
Programming languages such as Rust, Python and C have different syntax and semantics.
"""

SPM_WORDS = (
    "the of and to in is was for on that with as by at from this be are or an it which not have "
    "one all were when there been has more their if will would about out up what into some time "
    "them can only other new these two may first then do any like my now over such our man me "
    "even most made after also did many before must through back years where much your way well "
    "down should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another know "
    "while last might us great old year off come since against go came right used take three"
).split()


def training_lines():
    lines = [l for l in TRAINING_TEXT.splitlines() if l.strip()]
    # Deterministic extra text so the trainer finds enough pieces.
    n = len(SPM_WORDS)
    for i in range(3000):
        words = [SPM_WORDS[(i * 7 + j * 13 + (i // 5)) % n] for j in range(8 + i % 9)]
        lines.append(" ".join(words) + (". " if i % 3 else ", ") + str(i))
    return lines


# ------------------------------------------------------------------ chat templates

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

CHATS = [
    [{"role": "user", "content": "Hello, how are you?"}],
    [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "It's 42."},
        {"role": "user", "content": "Thanks! 日本語?"},
    ],
]

# ------------------------------------------------------------------ SentencePiece


def train_spm(workdir, name, dummy_prefix):
    prefix = os.path.join(workdir, name)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines()),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=600,
        byte_fallback=True,
        character_coverage=1.0,
        # Llama-2's trainer settings.
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=dummy_prefix,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=["[INST]", "[/INST]"],
        user_defined_symbols=["<tool>"],
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return prefix + ".model"


def spm_gguf(model_path, out_path, add_space_prefix):
    """GGUF tokenizer metadata as convert_hf_to_gguf.py `_set_vocab_sentencepiece` writes it."""
    sp = spm.SentencePieceProcessor()
    sp.LoadFromFile(model_path)
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        if sp.IsUnknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            t = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            t = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            t = gguf.TokenType.BYTE
        elif sp.IdToPiece(i) == "<tool>":
            # convert_hf_to_gguf marks added_tokens.json / user_defined pieces USER_DEFINED.
            t = gguf.TokenType.USER_DEFINED
        else:
            t = gguf.TokenType.NORMAL
        types.append(t)
    w = gguf.GGUFWriter(out_path, "llama")
    add_arch(w, len(tokens))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.add_chat_template(LLAMA2_TEMPLATE)
    finish(w)
    return sp


def add_arch(w, n_vocab):
    """The llama.* keys transformers' GGUF config reader wants (no tensors are written)."""
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def hf_gguf(path):
    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


def llama2_style(hf, add_space_prefix):
    """transformers' GGUF tokenizer (vocab, merges from scores, added tokens) with the text
    handling of Llama-2's own tokenizer.json: normalizer Prepend("▁") + Replace(" ", "▁"), no
    pre-tokenizer. This prepends the space to every piece of text between special tokens, as
    llama.cpp does (`add_space_prefix` after each special token) and sentencepiece does for a
    whole text; transformers' Metaspace(prepend_scheme="first") instead skips the prefix when the
    text already starts with a space (" x" -> "▁x", where sentencepiece gives "▁▁x")."""
    j = json.loads(hf.backend_tokenizer.to_str())
    norms = [{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]
    if add_space_prefix:
        norms.insert(0, {"type": "Prepend", "prepend": "▁"})
    j["normalizer"] = {"type": "Sequence", "normalizers": norms}
    j["pre_tokenizer"] = None
    j["post_processor"] = None
    if not add_space_prefix:
        j["decoder"]["decoders"] = [d for d in j["decoder"]["decoders"] if d["type"] != "Strip"]
    return Tokenizer.from_str(json.dumps(j))


SPM_EXTRA = ["[INST] hi [/INST] ok", "a <tool> b", "</s> after eos", "<s>x", "<unk>"]


def spm_cases(path, sp, add_space_prefix):
    hf = hf_gguf(path)
    fam = llama2_style(hf, add_space_prefix)
    cases, disagreements = [], []
    for text in CORPUS + SPM_EXTRA:
        ids = [1] + fam.encode(text, add_special_tokens=False).ids
        if not any(s in text for s in ("[INST]", "[/INST]", "<tool>", "</s>", "<s>", "<unk>")):
            sp_ids = [1] + sp.encode(text)
            if sp_ids != ids:
                raise SystemExit(f"{path}: sentencepiece and the Llama-2-style tokenizer differ on {text!r}: {sp_ids} vs {ids}")
            if sp.decode(ids[1:]) != fam.decode(ids, skip_special_tokens=True):
                raise SystemExit(f"{path}: decodes differ on {text!r}")
        hf_ids = hf.encode(text)
        if hf_ids != ids:
            disagreements.append({"text": text, "transformers_gguf_ids": hf_ids})
        cases.append({
            "text": text,
            "ids": ids,
            "decode": fam.decode(ids, skip_special_tokens=False),
            "decode_skip_special": fam.decode(ids, skip_special_tokens=True),
        })
    chats = []
    for msgs in CHATS:
        rendered = hf.apply_chat_template(msgs, tokenize=False)
        chats.append({"messages": msgs, "rendered": rendered, "ids": fam.encode(rendered, add_special_tokens=False).ids})
    return {
        "oracle": "transformers' GGUF vocab/merges with Llama-2 tokenizer.json text handling, = sentencepiece on text without special tokens",
        "cases": cases,
        "chats": chats,
        "transformers_gguf_disagreements": disagreements,
    }


# ------------------------------------------------------------------ byte-level BPE

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# deepseek-ai/deepseek-llm-7b-base tokenizer.json (llama.cpp LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM): the
# letter class as code point ranges (written as escapes: several of its characters, e.g. U+212A
# KELVIN SIGN, change under Unicode normalization).
DEEPSEEK_LLM_LETTERS = (
    "41-5A 61-7A B5 C0-D6 D8-F6 F8-1BA 1BC-1BF 1C4-293 295-2AF 370-373 376-377 37B-37D 37F 386 "
    "388-38A 38C 38E-3A1 3A3-3F5 3F7-481 48A-52F 531-556 10A0-10C5 13A0-13F5 13F8-13FD 1C90-1CBA "
    "1CBD-1CBF 1D00-1D2B 1D6B-1D77 1D79-1D9A 1E00-1F15 1F18-1F1D 1F20-1F45 1F48-1F4D 1F50-1F57 "
    "1F59 1F5B 1F5D 1F5F-1F7D 1F80-1FB4 1FB6-1FBC 1FBE 1FC2-1FC4 1FC6-1FCC 1FD0-1FD3 1FD6-1FDB "
    "1FE0-1FEC 1FF2-1FF4 1FF6-1FFC 2102 2107 210A-2113 2115 2119-211D 2124 2126 2128 212A-212D "
    "212F-2134 2139 213C-213F 2145-2149 214E 2183-2184 2C00-2C7B 2C7E-2CE4 2CEB-2CEE 2CF2-2CF3 "
    "A640-A66D A680-A69B A722-A76F A771-A787 A78B-A78E AB70-ABBF FB00-FB06 FB13-FB17 FF21-FF3A "
    "FF41-FF5A 10400-1044F 104B0-104D3 104D8-104FB 10C80-10CB2 10CC0-10CF2 118A0-118DF 1E900-1E943"
)


def char_class(ranges):
    out = []
    for r in ranges.split():
        a, _, b = r.partition("-")
        out.append(chr(int(a, 16)) + ("-" + chr(int(b, 16)) if b else ""))
    return "[" + "".join(out) + "]"


DEEPSEEK_LLM_SPLITS = [
    "[\r\n]",
    "\\s?" + char_class(DEEPSEEK_LLM_LETTERS) + "+",
    "\\s?" + char_class("21-2F 3A-7E FF01-FF0F FF1A-FF5E 2018-201F 3000-3002") + "+",
    "\\s+$",
    char_class("4E00-9FA5 800-4E00 AC00-D7FF") + "+",
]


def byte_level(use_regex):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)


def split(regex):
    return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)


# pre name -> (family pre-tokenizer, ignore_merges) as in that family's tokenizer.json.
# ignore_merges (a pre-token found in the vocabulary is emitted whole) is set by Llama-3's
# tokenizer.json and by llama.cpp for the llama3 and tekken pre-tokenizers.
FAMILIES = {
    "smollm": (lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level(True)]), False),
    "gpt2": (lambda: byte_level(True), False),
    "default": (lambda: byte_level(True), False),
    "llama-bpe": (lambda: pre_tokenizers.Sequence([split(LLAMA3_SPLIT), byte_level(False)]), True),
    "qwen2": (lambda: pre_tokenizers.Sequence([split(QWEN2_SPLIT), byte_level(False)]), False),
    "tekken": (lambda: pre_tokenizers.Sequence([split(TEKKEN_SPLIT), byte_level(False)]), True),
    "deepseek-llm": (
        lambda: pre_tokenizers.Sequence(
            [split(r) for r in DEEPSEEK_LLM_SPLITS]
            + [pre_tokenizers.Digits(individual_digits=True), byte_level(False)]
        ),
        False,
    ),
}


def smollm2_subset():
    """SmolLM2's control tokens, byte alphabet and first BPE_MERGES merges with their tokens."""
    path = os.path.join(os.environ.get("SHARED", "/work/shared"), "fixtures/tiny-llama/model/tokenizer.json")
    tj = json.load(open(path, encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in tj["model"]["merges"]][:BPE_MERGES]
    control = sorted((a["id"], a["content"]) for a in tj["added_tokens"] if a["special"])
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [c for _, c in control]
    seen = set(tokens)
    for t in sorted((t for t in alphabet if t in vocab), key=lambda t: vocab[t]):
        tokens.append(t)
        seen.add(t)
    for a, b in merges:
        t = a + b
        if t not in seen:
            tokens.append(t)
            seen.add(t)
    # SmolLM2 learned no merge with a digit (its pre-tokenizer isolates digits); a few extra
    # ones make the digit rules of the pre-tokenizers visible in the ids ("Ġa Z": tekken splits
    # before an upper-case letter).
    for a, b in DIGIT_MERGES:
        merges.append([a, b])
        tokens.append(a + b)
    return tokens, len(control), [f"{a} {b}" for a, b in merges]


DIGIT_MERGES = [("Ġa", "Z"), ("1", "2"), ("12", "3"), ("Ġ", "1"), ("Ġ1", "2"), ("2", "0"), ("20", "2"), ("4", "5"), ("45", "6")]


def bpe_gguf(out_path, tokens, n_control, merges, pre):
    w = gguf.GGUFWriter(out_path, "llama")
    add_arch(w, len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * n_control + [gguf.TokenType.NORMAL] * (len(tokens) - n_control))
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    finish(w)


def family_tokenizer(tokens, n_control, merges, pre):
    make_pre, ignore_merges = FAMILIES[pre]
    vocab = {t: i for i, t in enumerate(tokens)}
    model = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], ignore_merges=ignore_merges)
    tok = Tokenizer(model)
    tok.pre_tokenizer = make_pre()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in tokens[:n_control]])
    return tok


BPE_EXTRA = ["<|im_start|>user\nhi 123<|im_end|>", "x<|endoftext|>y"]


def bpe_cases(workdir, tokens, n_control, merges):
    out = {}
    for pre in FAMILIES:
        fam = family_tokenizer(tokens, n_control, merges, pre)
        path = os.path.join(workdir, f"bpe-{pre}.gguf")
        bpe_gguf(path, tokens, n_control, merges, pre)
        hf = hf_gguf(path)
        cases, disagreements = [], []
        for text in CORPUS + BPE_EXTRA:
            ids = fam.encode(text, add_special_tokens=False).ids
            hf_ids = hf.encode(text, add_special_tokens=False)
            if hf_ids != ids:
                disagreements.append({"text": text, "transformers_gguf_ids": hf_ids})
            cases.append({
                "text": text,
                "ids": ids,
                "decode": fam.decode(ids, skip_special_tokens=False),
                "decode_skip_special": fam.decode(ids, skip_special_tokens=True),
            })
        out[pre] = {"cases": cases, "transformers_gguf_disagreements": disagreements}
        print(f"bpe pre={pre}: {len(cases)} cases, transformers' GGUF loader differs on {len(disagreements)}")
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {
        "generated_by": "scripts/tokenizer-oracle.py",
        "versions": {
            "transformers": transformers.__version__,
            "tokenizers": __import__("tokenizers").__version__,
            "sentencepiece": spm.__version__,
            "gguf": "0.17.1",
        },
    }
    with tempfile.TemporaryDirectory() as work:
        for name, prefix in (("spm-llama.gguf", True), ("spm-noprefix.gguf", False)):
            model = train_spm(work, name, prefix)
            path = os.path.join(OUT, name)
            sp = spm_gguf(model, path, None if prefix else False)
            expected[name] = spm_cases(path, sp, prefix)
            print(f"{name}: {len(expected[name]['cases'])} cases, vocab {sp.vocab_size()}, "
                  f"transformers' GGUF loader differs on {len(expected[name]['transformers_gguf_disagreements'])}")

        tokens, n_control, merges = smollm2_subset()
        bpe_gguf(os.path.join(OUT, "bpe-smollm2.gguf"), tokens, n_control, merges, "smollm")
        expected["bpe-smollm2.gguf"] = {
            "oracle": "tokenizers with the family's pre-tokenizer",
            "pre": bpe_cases(work, tokens, n_control, merges),
        }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
