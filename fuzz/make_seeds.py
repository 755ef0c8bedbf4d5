#!/usr/bin/env python3
"""Write the small seed corpora under fuzz/seeds/<target>/ (committed; each well under 1 MB).

Run from the repository root: python3 fuzz/make_seeds.py. Uses only the standard
library and files under fixtures/.
"""
import glob, gzip, hashlib, json, os, shutil, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def st(tensors, metadata=None):
    """safetensors bytes from (name, dtype, shape, data) tuples."""
    header, off = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    # config_json: every distinct config.json of the fixtures, plus a few variants.
    seen = set()
    for p in sorted(glob.glob(os.path.join(ROOT, "fixtures", "configs", "*.json"))
                    + glob.glob(os.path.join(ROOT, "fixtures", "*", "*", "config.json"))):
        b = open(p, "rb").read()
        h = hashlib.sha1(b).hexdigest()[:12]
        if h not in seen:
            seen.add(h)
            put("config_json", "fixture-" + h, b)
    put("config_json", "qwen2-window", json.dumps({
        "model_type": "qwen2", "vocab_size": 10, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 1, "intermediate_size": 8, "head_dim": 16,
        "use_sliding_window": True, "sliding_window": 16, "eos_token_id": [2, 3],
        "rope_scaling": {"type": "linear", "factor": 2.0}}))
    put("config_json", "llama3", json.dumps({
        "model_type": "llama", "vocab_size": 10, "hidden_size": 64, "num_attention_heads": 4,
        "num_hidden_layers": 1, "intermediate_size": 8, "rope_theta": 500000.0, "hidden_act": "gelu",
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))
    put("config_json", "gpt2-min", '{"model_type":"gpt2","vocab_size":5,"n_embd":8,"n_head":2,"n_layer":1,"n_positions":4,"n_inner":16}')

    # safetensors_header: tiny files in each dtype and shape kind.
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.0)
    put("safetensors_header", "f32", st([("w", "F32", [2, 2], f32)]))
    put("safetensors_header", "mixed", st([
        ("model.embed.weight", "F16", [3], b"\x00\x3c\x00\xbc\x00\x00"),
        ("model.norm.weight", "BF16", [1, 2], b"\x80\x3f\x00\x40"),
        ("scalar", "F32", [], struct.pack("<f", 7.0)),
        ("empty", "F32", [0, 3], b""),
    ], metadata={"format": "pt"}))
    put("safetensors_header", "i64", st([("ids", "I64", [2], struct.pack("<2q", 1, 2)), ("b", "U8", [2], b"\x01\x02")]))
    put("safetensors_header", "empty-header", st([]))

    # safetensors_index: indexes over the two shards the harness writes, and the fixture's.
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    put("safetensors_index", "two-shards", json.dumps({"metadata": {"total_size": 32}, "weight_map": {
        "a.weight": shards[0], "b.weight": shards[0], "c.weight": shards[1], "d.bias": shards[1]}}, indent=2))
    put("safetensors_index", "one-shard", json.dumps({"weight_map": {"a.weight": shards[0]}}))
    put("safetensors_index", "fixture", open(os.path.join(ROOT, "fixtures/llama/step-200/model.safetensors.index.json"), "rb").read())

    # tokenizer_json: the fixtures' two tokenizers and a few small models of other kinds.
    for kind in ["plain", "bos"]:
        put("tokenizer_json", kind, open(os.path.join(ROOT, "fixtures/tokenizers", kind, "tokenizer.json"), "rb").read())
    put("tokenizer_json", "wordlevel", json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [
            {"id": 0, "content": "<unk>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
        "decoder": None, "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hello": 1, "world": 2}, "unk_token": "<unk>"}}))
    put("tokenizer_json", "wordpiece", json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"}, "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "he": 1, "##llo": 2, "world": 3}}}))
    put("tokenizer_json", "unigram", json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": {"type": "NFKC"}, "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "post_processor": None, "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["\u2581he", -1.0], ["llo", -2.0], ["h", -3.0], ["e", -3.0]], "byte_fallback": False}}))

    # data_reader: byte 0 picks the format, byte 1 the --text-field (see fuzz/src/lib.rs).
    jsonl = open(os.path.join(ROOT, "fixtures/data/val.jsonl"), "rb").read()
    put("data_reader", "jsonl", b"\x00\x00" + jsonl)
    put("data_reader", "jsonl-gz-ours", b"\x01\x00" + jsonl[:300])
    put("data_reader", "jsonl-gz-raw", b"\x02\x00" + gzip.compress(jsonl[:200], mtime=0))
    put("data_reader", "txt", b"\x03\x00" + b"a b\nc\n\n\n  \nd\n\ne\r\n")
    put("data_reader", "parquet", b"\x04\x00" + open(os.path.join(ROOT, "fixtures/data/val.parquet"), "rb").read())
    put("data_reader", "parquet-join", b"\x04\x05" + open(os.path.join(ROOT, "fixtures/data/val.parquet"), "rb").read())
    put("data_reader", "ndjson-qa", b"\x05\x01" + b'{"question":"q1","answer":"a1"}\n\n{"question":"q2","answer":"a2","x":1}\n')
    put("data_reader", "ndjson-ab", b"\x05\x02" + b'{"a":"x","b":""}\n{"a":1}\n')

    # pickle_file: the torch.save fixtures of scripts/make_pickle_fixtures.py (zip, zip64,
    # legacy, a zip rewritten by Python, a shard, refused ones).
    for name in ["f32", "f16", "bf16", "legacy", "zip64", "rezipped", "compressed", "evil_zip", "evil_exec"]:
        put("pickle_file", name, open(os.path.join(ROOT, "fixtures/pickle", name + ".bin"), "rb").read())
    put("pickle_file", "shard", open(os.path.join(ROOT, "fixtures/pickle/sharded/pytorch_model-00001-of-00002.bin"), "rb").read())

    # study_json: study.json, then (after NUL bytes) the part records of checkpoint c's two
    # parts; the losses files are the harness's fixture (fuzz/src/lib.rs, study_fixture).
    def entry(name, step, n=4, **kw):
        e = {"name": name, "step": step, "path": "/ckpts/" + name, "fingerprint": "fp", "n_tokens": n, "mean_loss": 2.0}
        e.update(kw)
        return e

    def manifest(cks, **kw):
        m = {"fingerprint": "fp", "data": "/d/val.jsonl", "settings": {"pack": False}, "checkpoints": cks}
        m.update(kw)
        return json.dumps(m, indent=1).encode()

    def part(i, **kw):
        r = {"name": "c", "step": 300, "order": 2, "after": "b", "path": "/ckpts/c", "fingerprint": "fp",
             "shard": i, "shards": 2, "row_start": 2 * i, "n_tokens": 2, "loss_sum": 3.0}
        r.update(kw)
        return json.dumps(r).encode()

    ab = [entry("a", 100), entry("b", 200)]
    put("study_json", "whole", manifest(ab, vocab_size=301))
    put("study_json", "sharded-c", manifest(ab))
    put("study_json", "sharded-c-records", manifest(ab) + b"\0" + part(0) + b"\0" + part(1))
    put("study_json", "c-listed-sharded", manifest(ab + [entry("c", 300, shards=2)]))
    put("study_json", "c-missing-part", manifest(ab) + b"\0" + part(0) + b"\0" + b"{}")
    put("study_json", "duplicate", manifest(ab + [entry("a", 100)]))
    put("study_json", "huge-shards", manifest([entry("a", 100, shards=4000000000), entry("b", 200)]))
    put("study_json", "part-huge-shards", manifest(ab) + b"\0" + part(0, shards=4000000000) + b"\0" + part(1, shards=4000000000))
    put("study_json", "rows-differ", manifest([entry("a", 100, n=5), entry("b", 200)]))
    put("study_json", "swapped", manifest([entry("b", 100), entry("a", 200, sha256="00" * 32)]))
    put("study_json", "checksums", manifest([entry("a", 100, sha256="0" * 64), entry("b", 200, sha256="f" * 64)]))
    put("study_json", "no-steps", manifest([entry("a", None, tokens_seen=5, stage=1), entry("b", None)]))
    put("study_json", "one", manifest([entry("a", 100)]))
    put("study_json", "empty", manifest([]))
    put("study_json", "other-fingerprint", manifest(ab, fingerprint="other"))


if __name__ == "__main__":
    main()
