"""The fused Triton ACTION path (action/fused_action.py) against the official formulation
(tests/action_reference.py): forward values and the gradients of x and of every ACTION parameter, fp32 and bf16,
channels_last and contiguous, train and eval; plus the dispatch and the product without triton.

On a CPU-only host the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set for this module before the
kernels are first built) on CPU tensors; on a CUDA host the same tests run the compiled kernels on the GPU.
Tolerances, relative to the fp32 reference's norm (and 4x that for its largest |value| in bf16): fp32 1e-5
(measured <= 1.7e-6), bf16 autocast 2e-2 (measured 0.2-0.9 %; bf16 rounding, which the torch path has too).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import action.temporal as AT
from action.errors import ModelError
from action.tsm import TemporalShift
from tests.action_reference import ReferenceAction
from test_action_modules import _randomise

ROOT = Path(__file__).resolve().parent.parent
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="module")
def device():
    """'cuda' with the compiled kernels where a GPU is present, else 'cpu' with the Triton interpreter."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (it comes with torch's CUDA wheels): the fused ACTION path is "
                    "tested where it is; the product falls back to the torch path")
    from action import fused_action as FA, fused_motion as FM, fused_motion_bn as FB

    if torch.cuda.is_available():
        with pytest.MonkeyPatch.context() as mp:  # fp32 means fp32: no TF32 in cuDNN / cuBLAS for these checks
            mp.setattr(torch.backends.cudnn, "allow_tf32", False)
            mp.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
            yield "cuda"
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        for mod in (FA, FM, FB):  # (re)build the kernels as interpreted functions
            mod._kernels.cache_clear()
        yield "cpu"
        for mod in (FA, FM, FB):
            mod._kernels.cache_clear()


def _pair(c: int, t: int, seed: int = 0):
    torch.manual_seed(seed)
    mod = AT.Action(nn.Conv2d(c, 16, 3, padding=1, bias=False), n_segment=t)
    _randomise(mod, seed)
    with torch.no_grad():  # a learned-looking shift: every tap of every channel in play
        mod.action_shift.weight.add_(0.3 * torch.randn_like(mod.action_shift.weight))
    ref = ReferenceAction(nn.Conv2d(c, 16, 3, padding=1, bias=False), n_segment=t)
    ref.load_state_dict(mod.state_dict())
    return mod, ref


def _check(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    got, want = got.detach().float().cpu(), want.detach().float()
    if not want.any():  # e.g. the motion path's gradients with T = 1 (no next frame: its difference is 0)
        assert got.abs().max().item() <= 1e-6, f"{what}: {got.abs().max().item():.2e} where 0 is wanted"
        return
    peak = (got - want).abs().max().item() / want.abs().max().item()
    norm = ((got - want).norm() / want.norm()).item()
    assert peak <= tol * (4 if tol > 1e-4 else 1) and norm <= tol, f"{what}: peak {peak:.2e}, norm {norm:.2e}"


def _run_pair(device, *, c=48, t=3, n=2, hw=5, channels_last=True, bf16=False, train=True):
    mod, ref = _pair(c, t)
    mod.impl = "triton"
    mod.to(device).train(train)
    ref.train(train)
    x = torch.randn(n * t, c, *((hw, hw) if isinstance(hw, int) else hw))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xf = x.clone().to(device, torch.bfloat16 if bf16 else torch.float32).contiguous(memory_format=fmt)
    xf.requires_grad_()
    xr = x.clone().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        out = mod(xf)
    want = ref(xr)
    assert out.dtype == (torch.bfloat16 if bf16 else torch.float32)
    g = torch.randn_like(want)
    out.backward(g.to(device, out.dtype))
    want.backward(g)
    return mod, ref, out, want, xf, xr


CASES = {  # name: kwargs of _run_pair
    "fp32-cl": dict(), "fp32-nchw": dict(channels_last=False), "bf16-cl": dict(bf16=True),
    "bf16-nchw": dict(bf16=True, channels_last=False), "fp32-cl-eval": dict(train=False),
    "fp32-nchw-T1": dict(t=1, n=3, channels_last=False),
    # 6 squeeze rows over blocks of 4, frames of 4x7 and 7x1 (the border masks of the pooled motion conv)
    "fp32-cl-wide": dict(c=80, hw=(4, 7)), "fp32-nchw-column": dict(c=80, hw=(7, 1), channels_last=False),
    "bf16-cl-eval": dict(bf16=True, train=False, hw=(6, 3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_matches_official_formulation(device, case):
    kw = CASES[case]
    tol = 2e-2 if kw.get("bf16") else 1e-5
    mod, ref, out, want, xf, xr = _run_pair(device, **kw)
    assert out.is_contiguous(memory_format=torch.channels_last if kw.get("channels_last", True)
                             else torch.contiguous_format)
    _check(out, want, tol, "output")
    _check(xf.grad, xr.grad, tol, "x grad")
    grads = dict(ref.named_parameters())
    for name, p in mod.named_parameters():
        _check(p.grad, grads[name].grad, tol, f"{name} grad")
    if kw.get("train", True):  # BN running statistics moved as the official module's
        _check(mod.action_p3_bn1.running_var, ref.action_p3_bn1.running_var, tol, "running_var")
        _check(mod.action_p3_bn1.running_mean, ref.action_p3_bn1.running_mean, max(tol, 1e-4), "running_mean")


def test_fused_with_the_gpu_block_sizes(device, monkeypatch):
    """The CUDA tile sizes (64-wide, several blocks and a partial one in P, a partial one in C) on the
    interpreter too, so CI covers the configuration the GPU runs."""
    from action import fused_action as FA

    monkeypatch.setattr(FA, "CPU_BLOCKS", FA.GPU_BLOCKS)
    mod, ref, out, want, xf, xr = _run_pair(device, c=80, t=3, n=1, hw=9)
    _check(out, want, 1e-5, "output")
    _check(xf.grad, xr.grad, 1e-5, "x grad")
    _check(mod.action_shift.weight.grad, ref.action_shift.weight.grad, 1e-5, "shift grad")


def test_official_checkpoint_logits_through_the_fused_path(device, tmp_path, monkeypatch):
    """An official-layout checkpoint ({'state_dict': {'module.…'}}) loads unchanged and the fused path gives the
    official formulation's logits (eval, fp32): the state dict is untouched by the kernels."""
    import copy

    from action import build_model, load_checkpoint
    from action.models import set_impl
    from tests.action_reference import make_reference_model

    torch.manual_seed(0)
    src = build_model("resnet18", num_classes=5, num_segments=2)
    with torch.no_grad():
        for name, p in src.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "action_shift" in name else 0.01))
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, tmp_path / "ck.pth.tar")
    model = build_model("resnet18", num_classes=5, num_segments=2)
    load_checkpoint(model, tmp_path / "ck.pth.tar")
    assert set(model.state_dict()) == set(src.state_dict())
    ref = make_reference_model(copy.deepcopy(model)).eval()
    model.eval().to(device)
    from action import fused_action as FA

    set_impl(model, "triton")
    monkeypatch.setattr(FA, "CPU_BLOCKS", FA.GPU_BLOCKS)  # fewer interpreted programs: the values are the test
    x = torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        got, want = model(x.to(device)), ref(x)
    _check(got, want, 1e-5, "logits")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the ResNet-sized check runs on GPU hosts")
def test_fused_matches_torch_path_at_resnet_size_on_cuda(device, monkeypatch):
    """ResNet-50 layer1 size, bf16 autocast, channels_last: the fused path and the torch path agree as closely
    as each agrees with the fp32 official formulation."""
    mod, ref = _pair(256, 8)
    mod.cuda()
    x = torch.randn(16, 256, 56, 56)
    res = {}
    for impl in ("triton", "torch"):
        mod.impl = impl
        mod.zero_grad()
        xi = x.cuda().contiguous(memory_format=torch.channels_last).requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = mod(xi)
        out.float().square().mean().backward()
        res[impl] = (out.float(), xi.grad.float(), mod.action_shift.weight.grad.clone())
    for a, b, what in zip(res["triton"], res["torch"], ("output", "x grad", "shift grad"), strict=True):
        assert ((a - b).norm() / b.norm()).item() < 2e-2, what


def _compile_for_sm90() -> None:
    """Compile the seven kernels to sm_90 cubin (run in a fresh process: an interpreted run patches
    triton.language in its process)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from action import fused_action as FA

    _, k_fwd, k_red, k_in = FA._kernels()
    target = GPUTarget("cuda", 90, 32)
    backend = triton.compiler.make_backend(target)
    strides = {f"s{a}{d}": "i32" for a in "xogd" for d in "fcp"}
    types = {"C": "i32", "P": "i32", "T": "i32", "NCB": "i32", "NPS": "i32", "P_CHUNK": "i32",
             "w_ptr": "*fp32", "dgate_ptr": "*fp32", "ds1_ptr": "*fp32", "dw_ptr": "*fp32"}
    sixteen = {"C", "P", "P_CHUNK"} | {k for k in strides if not k.endswith("c")}  # channels_last: stride_c = 1
    for kernel, consts in ((k_fwd, dict(BP=64, BC=64)), (k_red, dict(BP=32, BC=64)),
                           (k_in, dict(BP=64, BC=64))):
        names = kernel.arg_names
        consts = {**consts, **{n: 1 for n in names if n in strides and n.endswith("c")}}
        sig = {n: "constexpr" if n in consts else types.get(n, strides.get(n, "*bf16")) for n in names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
                 if n not in consts and (sig[n].startswith("*") or n in sixteen)}
        src = triton.compiler.ASTSource(fn=kernel, constexprs=consts, signature=sig, attrs=attrs)
        opts = backend.parse_options({"num_warps": 4, "num_stages": 3})
        cc = triton.compile(src, target=target, options=opts.__dict__)
        assert cc.asm["cubin"] and "ld.global.v" in cc.asm["ptx"], f"{kernel.__name__}: no vectorised loads"
    # the motion passes: z's rows are 3·(r+1) groups (r+1 is odd at ResNet widths), so no alignment to promise
    from action import fused_motion as FM

    strides = {f"s{a}{d}": "i32" for a in "zyg" for d in "fcp"}
    types = {"R": "i32", "T": "i32", "H": "i32", "W": "i32", "NPB": "i32", "st_ptr": "*fp32", "gst_ptr": "*fp32"}
    for kernel in FM._kernels():
        names = kernel.arg_names
        consts = {"BP": 64, "BR": 32, **{n: 1 for n in names if n in strides and n.endswith("c")}}
        sig = {n: "constexpr" if n in consts else types.get(n, strides.get(n, "*bf16")) for n in names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if sig[n].startswith("*")}
        src = triton.compiler.ASTSource(fn=kernel, constexprs=consts, signature=sig, attrs=attrs)
        opts = backend.parse_options({"num_warps": 4, "num_stages": 3})
        assert triton.compile(src, target=target, options=opts.__dict__).asm["cubin"], kernel.__name__
    # batch norm and the pooled means from the frame statistics: all fp32, train and eval variants
    from action import fused_motion_bn as FB

    for kernel in FB._kernels():
        for batch in (True, False):
            names = kernel.arg_names
            consts = {"BATCH": batch, "BF": 32, "BR": 32}
            types = {"NT": "i32", "R": "i32", "P": "i32", "T": "i32", "eps": "fp32", "unbias": "fp32"}
            sig = {n: "constexpr" if n in consts else types.get(n, "*fp32") for n in names}
            src = triton.compiler.ASTSource(fn=kernel, constexprs=consts, signature=sig)
            opts = backend.parse_options({"num_warps": 4, "num_stages": 3})
            assert triton.compile(src, target=target, options=opts.__dict__).asm["cubin"], kernel.__name__
    print("compiled")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_kernels_compile_for_the_h200(tmp_path):
    """The interpreter does not compile: here the seven kernels go through Triton's real compiler to sm_90
    (H100/H200) PTX and cubin with triton's bundled ptxas, for bf16 channels_last (the training layout) with the
    divisibility the JIT sees at ResNet shapes -- and their loads are vectorised."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), TRITON_CACHE_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", "import test_action_fused as T; T._compile_for_sm90()"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    if res.returncode and "make_backend" in res.stderr and "compiled" not in res.stdout:
        pytest.skip(f"triton's CUDA backend is unavailable here: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]


def test_dispatch_and_errors(monkeypatch):
    from action.models import build_model, resolve_action_impl, set_impl

    x = torch.randn(4, 32, 3, 3)
    for impl, want in (("auto", False), ("torch", False), ("triton", True)):
        assert AT._use_triton(x, impl) is want, impl  # CPU tensors: auto keeps the torch path
    assert resolve_action_impl(None) == "auto" and resolve_action_impl("torch") == "torch"
    m = build_model("resnet18", num_classes=3, num_segments=2, action_impl="triton")
    assert {a.impl for a in m.modules() if isinstance(a, AT.Action)} == {"triton"}
    set_impl(m, "torch", "reference")
    assert {(a.impl, a.shift_impl) for a in m.modules() if isinstance(a, AT.Action)} == {("torch", "reference")}
    with pytest.raises(ValueError, match="action_impl must be one of"):
        resolve_action_impl("cuda")
    with pytest.raises(ValueError, match="action_impl must be one of"):
        AT.Action(nn.Conv2d(32, 8, 1, bias=False), n_segment=4, impl="cuda")
    with pytest.raises(ValueError, match="shift_impl must be one of"):
        TemporalShift(nn.Identity(), n_segment=4, shift_impl="fast")
    if HAS_TRITON:  # the Triton path on CPU without the interpreter: one clear error, not a crash in triton
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(ModelError, match="TRITON_INTERPRET=1"):
            AT.Action(nn.Conv2d(32, 8, 1, bias=False), n_segment=4, impl="triton")(x)


def test_product_without_triton():
    """Importing the ACTION code loads no triton; with triton unimportable the block still runs (auto = torch
    path), available() says so, and forcing the Triton path is a one-line ModelError."""
    code = """
import sys
import torch
import action.temporal as AT
from action import fused_action as FA
assert 'triton' not in sys.modules, 'importing action loaded triton'
sys.modules['triton'] = None  # import triton now raises ImportError
from action.errors import ModelError
m = AT.Action(torch.nn.Conv2d(32, 5, 1), n_segment=2)
x = torch.randn(4, 32, 6, 6)
with torch.no_grad():
    ref = m(x)
    assert FA.available() is False and AT._use_triton(x, 'auto') is False
    m.impl = 'triton'
    try:
        m(x)
    except ModelError as e:
        assert 'needs the triton package' in str(e) and '\\n' not in str(e), e
    else:
        raise AssertionError('forced Triton path ran without triton')
print('ok', tuple(ref.shape))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "ok (4, 5, 6, 6)" in res.stdout, res.stderr[-2000:]
