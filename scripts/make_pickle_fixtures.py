#!/usr/bin/env python3
"""Write the PyTorch pickle fixtures under fixtures/pickle/ for rho's pickle reader.

Usage (from the repository root, after scripts/make_fixtures.py):

    .venv/bin/python scripts/make_pickle_fixtures.py

Seeded and deterministic: a rerun with the same torch version gives the same bytes
(the legacy format's storage keys, memory addresses, are renamed "0", "1", ...).

What it writes (all small):

* f32.bin, f16.bin, bf16.bin   torch.save (zip) of a state dict per dtype: a tensor under two
                               names (tied), a view at an offset, a slice, a transposed and a
                               step-sliced tensor (non-contiguous), a Parameter, a 0-d, an empty
                               tensor, special values (inf, nan, -0, subnormals), and the buffers
                               old checkpoints carry (bool `attention.bias`, int64 `position_ids`)
* legacy.bin                   the f32 state dict in the legacy (non-zip) format
* rezipped.bin                 f32.bin rewritten by Python's zipfile (stored, no alignment, no data
                               descriptors): another zip layout
* zip64.bin                    f16.bin with every zip64 structure (extra fields, zip64 end records)
* compressed.bin               f32.bin deflated by zipfile: refused
* bigendian.bin                f32.bin whose `byteorder` record says "big": refused
* sharded/                     pytorch_model-0000{1,2}-of-00002.bin + pytorch_model.bin.index.json (bf16)
* expected.safetensors         every tensor above, contiguous, as `<file>/<name>` (sharded: `sharded/<name>`)
* evil_reduce.bin              pickle: os.system (as `posix system`) called through __reduce__
* evil_exec.bin                pickle protocol 4 (STACK_GLOBAL): builtins.exec through __reduce__
* evil_nested.bin              torch.save zip: os.system inside a `_rebuild_tensor_v2` call's size argument
* evil_zip.bin                 torch.save zip: a real tensor and, beside it, os.system through __reduce__
* neox/step3000/               fixtures/neox/step3000 as a sharded .bin checkpoint (2 shards + index),
                               f32, one weight stored transposed, plus GPT-NeoX's old buffers
                               (`attention.bias`, `attention.masked_bias`, `attention.rotary_emb.inv_freq`):
                               rho eval must reproduce fixtures/neox/golden_losses.jsonl for step3000

Each malicious file, if loaded unsafely (pickle.load / torch.load(weights_only=False)), creates
/tmp/rho-pickle-fixture-ran-<name>; the script checks that it does (the payloads are live), then
removes the marker. The Rust tests check the marker never appears.
"""

from __future__ import annotations

import builtins
import collections
import io
import json
import os
import pickle
import pickletools
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "pickle"
MARK = "/tmp/rho-pickle-fixture-ran-"

torch.manual_seed(0)
torch.set_num_threads(1)


def state(dtype: torch.dtype, seed: int) -> "collections.OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    base = r(4, 6)
    sd = collections.OrderedDict()
    sd["embed.weight"] = base  # storage shared by the next three
    sd["lm_head.weight"] = base  # tied: the same tensor under two names
    sd["row.view"] = base.view(-1)[5:11]  # contiguous view at offset 5
    sd["block.slice"] = base[1:3, 2:5]  # non-contiguous slice at offset 8
    sd["proj.weight"] = r(3, 5).t()  # transposed: stride (1, 5)
    sd["strided"] = r(10)[1::3]  # step 3, offset 1
    sd["cube.permuted"] = r(2, 3, 4).permute(2, 0, 1)  # 3-d, strides (1, 12, 4)
    sd["norm.weight"] = torch.nn.Parameter(r(6), requires_grad=False)
    sd["scalar"] = torch.tensor(1.5, dtype=dtype)
    sd["empty"] = torch.zeros(0, 3, dtype=dtype)
    special = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-7, -3e-5, 65504.0, 1e-40, 3.0e38]
    sd["special"] = torch.tensor(special, dtype=torch.float32).to(dtype)
    sd["attention.bias"] = torch.tril(torch.ones(4, 4, dtype=torch.bool)).view(1, 1, 4, 4)
    sd["position_ids"] = torch.arange(5).view(1, 5)
    return sd


def expected_of(prefix: str, sd) -> dict:
    return {f"{prefix}/{k}": v.detach().contiguous().clone() for k, v in sd.items()}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        return torch.equal(a.contiguous().view(torch.int16 if a.element_size() == 2 else torch.int32),
                           b.contiguous().view(torch.int16 if b.element_size() == 2 else torch.int32))
    return torch.equal(a, b)


def check_roundtrip(path: Path, sd) -> None:
    back = torch.load(path, weights_only=True)
    assert list(back) == list(sd), path
    for k in sd:
        assert same(back[k], sd[k].detach()), (path, k)


# -- the legacy format with deterministic storage keys ----------------------------------
def legacy_deterministic(raw: bytes) -> bytes:
    """Rename the legacy format's storage keys (memory addresses, whose sort order varies
    between runs) to "0", "1", ... in order of first use in the main pickle, rewriting its
    BINUNICODE ops, the key list and the order of the storages after it."""
    f = io.BytesIO(raw)
    for _ in range(3):  # magic, protocol, sys_info
        pickle.load(f)
    main_start = f.tell()
    seen: dict[str, int] = {}  # key -> element size, in order of first use

    class Keys(pickle.Unpickler):
        def persistent_load(self, pid):
            dtype = pid[1].dtype
            seen.setdefault(pid[2], torch._utils._element_size(dtype))
            return torch.storage.TypedStorage(pid[4], dtype=dtype)

    Keys(f).load()
    main_end = f.tell()
    keys = pickle.load(f)
    data_start = f.tell()
    assert sorted(keys) == sorted(seen)
    blobs, off = {}, data_start
    for k in keys:
        (n,) = struct.unpack("<q", raw[off:off + 8])
        end = off + 8 + n * seen[k]
        blobs[k] = raw[off:end]
        off = end
    assert off == len(raw)
    rename = {k: str(i) for i, k in enumerate(seen)}
    body = raw[main_start:main_end]
    ops = list(pickletools.genops(io.BytesIO(body)))
    out = bytearray(raw[:main_start])
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(body)
        if op.name == "BINUNICODE" and arg in rename:
            s = rename[arg].encode()
            out += b"X" + struct.pack("<I", len(s)) + s
        else:
            out += body[pos:end]
    out += pickle.dumps(list(rename.values()), protocol=2)
    for k in seen:
        out += blobs[k]
    return bytes(out)


# -- zip rewrites -------------------------------------------------------------------------
def rezip(src: Path, dst: Path, compression=zipfile.ZIP_STORED, replace=None) -> None:
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            zi = zipfile.ZipInfo(info.filename, date_time=(2020, 1, 1, 0, 0, 0))
            zi.compress_type = compression
            zout.writestr(zi, data)


def zip64(src: Path, dst: Path) -> None:
    """Rewrite a zip with every zip64 structure: 0xFFFFFFFF sizes and offsets in the
    headers with the real values in zip64 extra fields, a zip64 end of central directory
    record and its locator, and 0xFFFF counts in the classic end record."""
    with zipfile.ZipFile(src) as zin:
        entries = [(i.filename.encode(), zin.read(i.filename)) for i in zin.infolist()]
    out = bytearray()
    central = bytearray()
    for name, data in entries:
        crc = zipfile.crc32(data) & 0xFFFFFFFF
        off = len(out)
        extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(name), len(extra))
        out += name + extra + data
        cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF,
                               0xFFFFFFFF, len(name), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF)
        central += name + cextra
    cd_off = len(out)
    out += central
    eocd64_off = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(entries), len(entries), len(central), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, eocd64_off, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    dst.write_bytes(bytes(out))


# -- malicious pickles ----------------------------------------------------------------------
class System:
    """Unpickled unsafely, runs `touch <marker>` through os.system (pickled as posix.system)."""

    def __init__(self, name: str):
        self.cmd = f"touch {MARK}{name}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


class Exec:
    def __init__(self, name: str):
        self.code = f"open({MARK + name!r}, 'w').close()"

    def __reduce__(self):
        return (builtins.exec, (self.code,))


class NestedInRebuild:
    """A tensor rebuild call whose size argument holds an os.system call."""

    def __init__(self, t: torch.Tensor, name: str):
        self.t, self.name = t, name

    def __reduce__(self):
        st = torch.storage.TypedStorage(wrap_storage=self.t.untyped_storage(), dtype=self.t.dtype, _internal=True)
        return (torch._utils._rebuild_tensor_v2,
                (st, 0, (System(self.name),), (1,), False, collections.OrderedDict()))


def check_live(path: Path, name: str, loader) -> None:
    marker = Path(MARK + name)
    marker.unlink(missing_ok=True)
    try:
        loader(path)
    except Exception:  # the payload runs before any failure (the nested one fails afterwards)
        pass
    assert marker.exists(), f"{path}: the payload did not run when loaded unsafely"
    marker.unlink()


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    expected: dict[str, torch.Tensor] = {}

    sds = {}
    for i, (name, dtype) in enumerate([("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)]):
        sd = state(dtype, 100 + i)
        sds[name] = sd
        p = OUT / f"{name}.bin"
        torch.save(sd, p)
        check_roundtrip(p, sd)
        expected.update(expected_of(f"{name}.bin", sd))

    p = OUT / "legacy.bin"
    buf = io.BytesIO()
    torch.save(sds["f32"], buf, _use_new_zipfile_serialization=False)
    p.write_bytes(legacy_deterministic(buf.getvalue()))
    check_roundtrip(p, sds["f32"])
    expected.update(expected_of("legacy.bin", sds["f32"]))

    rezip(OUT / "f32.bin", OUT / "rezipped.bin")
    check_roundtrip(OUT / "rezipped.bin", sds["f32"])
    expected.update(expected_of("rezipped.bin", sds["f32"]))
    zip64(OUT / "f16.bin", OUT / "zip64.bin")
    check_roundtrip(OUT / "zip64.bin", sds["f16"])
    expected.update(expected_of("zip64.bin", sds["f16"]))
    rezip(OUT / "f32.bin", OUT / "compressed.bin", compression=zipfile.ZIP_DEFLATED)
    rezip(OUT / "f32.bin", OUT / "bigendian.bin", replace={"/byteorder": b"big"})

    # Sharded, as transformers 4.x saved big models: one state dict split by name, and an index.
    sh = OUT / "sharded"
    sh.mkdir()
    g = torch.Generator().manual_seed(7)
    full = collections.OrderedDict(
        (f"layers.{i}.{w}", torch.randn(3, 4, generator=g).to(torch.bfloat16))
        for i in range(2) for w in ["q.weight", "k.weight"]
    )
    full["layers.1.k.weight"] = full["layers.1.k.weight"].t().contiguous().t()  # same values, transposed storage
    names = list(full)
    shards = [names[:2], names[2:]]
    weight_map = {}
    for j, ks in enumerate(shards):
        fname = f"pytorch_model-{j + 1:05d}-of-{len(shards):05d}.bin"
        torch.save({k: full[k] for k in ks}, sh / fname)
        weight_map.update({k: fname for k in ks})
    (sh / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": sum(v.numel() * 2 for v in full.values())}, "weight_map": weight_map},
                   indent=2) + "\n")
    expected.update(expected_of("sharded", full))

    save_file(expected, OUT / "expected.safetensors")

    # Malicious files.
    p = OUT / "evil_reduce.bin"
    p.write_bytes(pickle.dumps({"w": System("evil_reduce")}, protocol=2))
    check_live(p, "evil_reduce", lambda q: pickle.loads(q.read_bytes()))
    p = OUT / "evil_exec.bin"
    p.write_bytes(pickle.dumps(collections.OrderedDict(w=Exec("evil_exec")), protocol=4))
    check_live(p, "evil_exec", lambda q: pickle.loads(q.read_bytes()))
    p = OUT / "evil_nested.bin"
    torch.save({"w": NestedInRebuild(torch.ones(2), "evil_nested")}, p)
    check_live(p, "evil_nested", lambda q: torch.load(q, weights_only=False))
    p = OUT / "evil_zip.bin"
    torch.save(collections.OrderedDict([("w", torch.ones(2, 3)), ("x", System("evil_zip"))]), p)
    check_live(p, "evil_zip", lambda q: torch.load(q, weights_only=False))
    for n in ["evil_reduce", "evil_exec", "evil_nested", "evil_zip"]:
        ops = {op.name for op, _, _ in pickletools.genops(_pickle_of(OUT / f"{n}.bin"))}
        assert ops & {"GLOBAL", "STACK_GLOBAL"}, n

    # The neox golden checkpoint as a sharded .bin folder.
    src = ROOT / "fixtures" / "neox" / "step3000"
    dst = OUT / "neox" / "step3000"
    dst.mkdir(parents=True)
    for f in ["config.json", "tokenizer.json"]:
        shutil.copy(src / f, dst / f)
    sd = collections.OrderedDict(sorted(load_file(src / "model.safetensors").items()))
    cfg = json.loads((src / "config.json").read_text())
    rot = int(cfg["hidden_size"] // cfg["num_attention_heads"] * cfg["rope_parameters"]["partial_rotary_factor"])
    ctx = cfg["max_position_embeddings"]
    w = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    sd[w] = sd[w].t().contiguous().t()
    assert not sd[w].is_contiguous()
    for i in range(cfg["num_hidden_layers"]):
        a = f"gpt_neox.layers.{i}.attention."
        sd[a + "bias"] = torch.tril(torch.ones(ctx, ctx, dtype=torch.bool)).view(1, 1, ctx, ctx)
        sd[a + "masked_bias"] = torch.tensor(-1e9)
        sd[a + "rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    names = list(sd)
    half = len(names) // 2
    weight_map = {}
    for j, ks in enumerate([names[:half], names[half:]]):
        fname = f"pytorch_model-{j + 1:05d}-of-00002.bin"
        torch.save(collections.OrderedDict((k, sd[k]) for k in ks), dst / fname)
        weight_map.update({k: fname for k in ks})
    (dst / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2) + "\n")

    total = 0
    for q in sorted(OUT.rglob("*")):
        if q.is_file():
            total += q.stat().st_size
            print(f"{q.stat().st_size:>8}  {q.relative_to(ROOT)}")
    print(f"{total:>8}  total")
    return 0


def _pickle_of(p: Path) -> io.BytesIO:
    b = p.read_bytes()
    if b[:2] == b"PK":
        with zipfile.ZipFile(p) as z:
            return io.BytesIO(z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0]))
    return io.BytesIO(b)


if __name__ == "__main__":
    sys.exit(main())
