#!/usr/bin/env python3
"""Patch a copy of candle-core's src/backprop.rs so that a gradient's first contribution is
stored as it is, not added to a tensor of zeros.

candle 0.11's backward pass does, for every input of every op,

    let sum_grad = grads.or_insert(arg)?;      // a zeros_like(arg) when arg has none yet
    *sum_grad = sum_grad.add(&arg_grad)?;

so each gradient costs a zero fill and a full add even when it has a single contribution
(almost all of them). On the H200 that add was 42% of a TinyLlama training step's GPU time
(1,242 `badd_bf16` launches, 59 ms of 140 ms at 4x1024; BENCHMARKS.md, "GPU"). rho cannot
change this from outside (candle's `Tensor::op()` is crate-private), so it builds against
third_party/candle-core, candle-core 0.11.1 from crates.io with this script applied
(Cargo.toml's [patch.crates-io]; third_party/README.md); scripts/gpu/package.sh copies the
patched file into the CUDA build's own vendored copy.

Each adjacent pair above becomes `grads.accumulate(arg, &arg_grad)?;`, where `accumulate`
inserts the contribution itself (made contiguous, as the add made it: candle's matmul
backward refuses some strided gradients, e.g. a transpose's) when there is none yet and adds
otherwise: the same values (0 + x is x), without the zero fill and the add for a gradient
with one contribution (a copy only where the contribution is a view). Pairs that are not
adjacent, or whose contribution reads the stored gradient in another way than its dims, and
every `sub`, are left as they are.

    python3 scripts/patch_candle_backprop.py PATH/TO/candle-core/src/backprop.rs

Idempotent (a marker comment); exits 1 if the file does not look like candle 0.11's (fewer
than 40 pairs found), so a new candle version is noticed, not silently half-patched.
"""
import re
import sys

MARK = "// rho patch: first gradient contribution stored as is"
ACCUMULATE = '''
    /// The gradient of `tensor` plus `grad`, or `grad` itself when `tensor` has none yet
    /// (rho patch: candle adds every first contribution to a tensor of zeros).
    pub fn accumulate(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        ''' + MARK + '''
        match self.0.entry(tensor.id()) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let sum = e.get().add(grad)?;
                *e.get_mut() = sum;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(grad.contiguous()?);
            }
        }
        Ok(())
    }
'''

PAIR = re.compile(
    r"^(?P<indent>[ \t]*)let (?P<name>\w+) = grads\.or_insert\((?P<arg>\w+)\)\?;[ \t]*\n"
    r"[ \t]*\*(?P=name) = (?P=name)\.add\(&(?P<expr>.+)\)\?;?[ \t]*$",
    re.M,
)


def patch(src):
    """The patched text, the pairs patched and the pairs left (src not yet patched)."""
    kept = 0

    def repl(m):
        nonlocal kept
        name, arg, expr = m.group("name"), m.group("arg"), m.group("expr")
        # the stored gradient's dims are the argument's
        expr = expr.replace(f"{name}.dims()", f"{arg}.dims()")
        if re.search(rf"\b{name}\b", expr):
            kept += 1
            return m.group(0)
        return f"{m.group('indent')}grads.accumulate({arg}, &{expr})?;"

    out, n = PAIR.subn(repl, src)
    anchor = "impl GradStore {\n"
    if anchor not in out:
        raise ValueError("no `impl GradStore {` in the file: not candle 0.11's backprop.rs")
    out = out.replace(anchor, anchor + ACCUMULATE, 1)
    return out, n - kept, kept


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    path = sys.argv[1]
    src = open(path).read()
    if MARK in src:
        print(f"{path}: already patched")
        return
    try:
        out, patched, kept = patch(src)
    except ValueError as e:
        raise SystemExit(f"{path}: {e}")
    if patched < 40:
        raise SystemExit(f"{path}: only {patched} or_insert/add pairs found (candle 0.11 has over 40): not patched")
    open(path, "w").write(out)
    print(f"{path}: {patched} gradient accumulations patched, {kept} left as they are")


if __name__ == "__main__":
    main()
