"""Precision (bf16 on CPU, fp16 with a grad scaler on CUDA) and jit_compile, each against the
hand-written equivalent."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import torchfit
from conftest import blobs, loader, mlp


# ---------------------------------------------------------------- precision
def test_bf16_autocast_trains_on_cpu_close_to_fp32():
    ds = blobs(128)
    out_dtypes = []
    net16 = mlp(seed=5)
    net32 = copy.deepcopy(net16)
    net16[0].register_forward_hook(lambda mod, inp, out: out_dtypes.append(out.dtype))
    histories = {}
    for name, net in (("bf16", net16), ("32", net32)):
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-2),
                                           ["accuracy"], device="cpu", precision=name)
        histories[name] = model.fit(3, loader(ds, 16, shuffle=True, seed=0), loader(ds, 64), verbose=0)
        if name == "bf16":
            assert model.evaluate(loader(ds, 64))["val_loss"] == pytest.approx(histories[name]["val_loss"].iloc[-1])
    assert set(out_dtypes) == {torch.bfloat16}  # the forward really ran under bf16 autocast
    assert net16[0].weight.dtype == torch.float32  # the master weights stay float32
    h16, h32 = histories["bf16"], histories["32"]
    assert all(math.isfinite(v) for v in h16["loss"])
    assert not np.array_equal(h16["loss"].values, h32["loss"].values)  # it is not silently fp32
    np.testing.assert_allclose(h16["loss"].values, h32["loss"].values, atol=0.05)
    np.testing.assert_allclose(h16["val_loss"].values, h32["val_loss"].values, atol=0.05)


def test_fp16_on_cpu_is_an_error_naming_the_alternatives():
    with pytest.raises(ValueError, match="16-mixed.*needs a CUDA device.*bf16"):
        torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), device="cpu", precision="16-mixed")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_mixed_uses_a_grad_scaler_on_cuda(tmp_path):
    ds = blobs(128)
    net16 = mlp(seed=5)
    net32 = copy.deepcopy(net16)
    scales, first_grad_norms, histories = [], {}, {}
    for name, net in (("16-mixed", net16), ("32", net32)):
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-2),
                                           device="cuda", precision=name)
        scaler = model.precision.scaler
        assert (scaler is not None and scaler.is_enabled()) == (name == "16-mixed")

        def probe(batch, name=name, net=net, scaler=scaler):
            if scaler is not None:
                scales.append(scaler.get_scale())
            first_grad_norms.setdefault(name, torch.cat([p.grad.flatten() for p in net.parameters()]).norm().item())

        histories[name] = model.fit(3, loader(ds, 16, shuffle=True), verbose=0,
                                    callbacks=[torchfit.LambdaCallback(on_backward_end=probe)])
        if name == "16-mixed":
            model.save_checkpoint(tmp_path / "fp16.pt")
            saved = torch.load(tmp_path / "fp16.pt", weights_only=True, map_location="cpu")
            assert saved["scaler"]["scale"] == scaler.get_scale()
    assert scales and scales[0] == 65536.0  # the scaler scaled the loss...
    # ...and on_backward_end saw the gradients already unscaled (not 65536 times larger)
    assert first_grad_norms["16-mixed"] == pytest.approx(first_grad_norms["32"], rel=1e-2)
    np.testing.assert_allclose(histories["16-mixed"]["loss"].values, histories["32"]["loss"].values, atol=0.05)


# ------------------------------------------------------------------ compile
@pytest.mark.slow  # torch.compile builds C++ kernels with gcc: about 45 s cold on 2 busy cores, 10 s cached
def test_jit_compile_trains_like_eager():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ds = blobs(96)  # whole batches only: one compiled graph
    net_c = mlp(seed=3)
    net_e = copy.deepcopy(net_c)
    results = {}
    for jit, net in ((True, net_c), (False, net_e)):
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
                                           ["accuracy"], device="cpu", jit_compile=jit)
        results[jit] = (model.fit(2, loader(ds, 16, shuffle=True, seed=1), verbose=0), model)
    (h_c, m_c), (h_e, _) = results[True], results[False]
    # the training forward ran through torch.compile: one frame, one graph, no fallback
    assert counters["frames"]["ok"] == 1 and counters["stats"]["unique_graphs"] == 1
    np.testing.assert_allclose(h_c["loss"].values, h_e["loss"].values, rtol=1e-5)
    for (name, a), b in zip(net_c.state_dict().items(), net_e.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert list(m_c.state_dict()) == ["net." + k for k in net_c.state_dict()]  # the wrapper is not a submodule
    m_c.evaluate(loader(ds, 32))
    assert counters["frames"]["total"] == 1  # evaluate stays eager


def test_jit_compile_rejects_other_values():
    with pytest.raises(TypeError, match="jit_compile must be True, False or a dict"):
        torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), device="cpu", jit_compile="yes")
