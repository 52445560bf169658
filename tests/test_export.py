"""export: a CNN, two RNNs and a net with dict inputs round-trip through torch.export and ONNX within
1e-5 of the eager net; a net with data-dependent control flow is refused with the line that branches;
a program that differs from the eager net is refused and leaves no file."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import torchfit
from torchfit.export import ExportError, export
from conftest import SmallCNN, digits

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
safetensors_torch = pytest.importorskip("safetensors.torch")


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = cell(5, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class Tabular(nn.Module):
    """Numbers and a category in a dict; two outputs in a dict."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.num = nn.Linear(4, 8)
        self.cat = nn.Embedding(10, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, num, cat):
        hidden = torch.relu(self.num(num) + self.cat(cat))
        return {"logits": self.out(hidden), "hidden": hidden}


def cnn_case():
    torch.manual_seed(0)
    net = SmallCNN()
    x, y = digits(16).tensors
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam", device="cpu")
    model.fit(1, torch.utils.data.DataLoader(digits(64), batch_size=16), verbose=0)  # BatchNorm stats that matter
    return model, (x, y)


CASES = {
    "cnn": cnn_case,
    "gru": lambda: (Recurrent(nn.GRU), (torch.randn(6, 7, 5), torch.zeros(6))),
    "lstm": lambda: (Recurrent(nn.LSTM), torch.randn(6, 7, 5)),
    "dict": lambda: (Tabular(), ({"num": torch.randn(6, 4), "cat": torch.randint(0, 10, (6,))}, torch.zeros(6))),
}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_within_1e_5(tmp_path, case, fmt):
    net, batch = CASES[case]()
    path = tmp_path / f"net.{fmt}"
    report = export(net, path, batch)
    assert report.path == str(path) and os.path.exists(path) and report.format == fmt
    assert report.max_abs_diff < 1e-5
    sizes = [n for n, _ in report.checks]
    assert len(sizes) == 4 and len(set(sizes)) == 4  # the example and three other batch sizes
    # the file stands alone: run it here the way a user would, on a batch size never seen
    inner = getattr(net, "net", net)
    x = batch[0] if isinstance(batch, tuple) else batch
    more = {k: torch.cat([v, v[:3]]) for k, v in x.items()} if isinstance(x, dict) else torch.cat([x, x[:3]])
    inner.eval()
    with torch.no_grad():
        want = inner(**more) if isinstance(more, dict) else inner(more)
    if fmt == "pt2":
        program = torch.export.load(str(path)).module()
        got = program(**more) if isinstance(more, dict) else program(more)
        got = list(got.values()) if isinstance(got, dict) else [got]
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = ({i.name: more[i.name].numpy() for i in session.get_inputs()} if isinstance(more, dict)
                else {session.get_inputs()[0].name: more.numpy()})
        names = [o.name for o in session.get_outputs()]
        got = [torch.from_numpy(o) for o in session.run(None, feed)]
        if isinstance(want, dict):
            assert names == list(want)  # dict outputs keep their names
    want = list(want.values()) if isinstance(want, dict) else [want]
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    # safetensors weights beside it, loadable into a fresh net
    assert report.weights_path == str(tmp_path / "net.safetensors")
    fresh = CASES[case]()[0]
    fresh = getattr(fresh, "net", fresh)
    for p in fresh.parameters():
        nn.init.zeros_(p)
    safetensors_torch.load_model(fresh, report.weights_path)
    for k, v in inner.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # a branch on a tensor's value
            return self.fc(x)
        return -self.fc(x)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_data_dependent_control_flow_is_refused_with_the_line(tmp_path, fmt):
    path = tmp_path / f"net.{fmt}"
    with pytest.raises(ExportError, match=r"data-dependent control flow at test_export.py:\d+ \(`if x.sum\(\) > 0:.*`\)"
                                          r".*torch.cond"):
        export(Branchy(), path, torch.randn(6, 4))
    assert os.listdir(tmp_path) == []  # nothing written, not even the weights


class Counter(nn.Module):
    """Python state read while tracing: the exported program keeps the value it saw."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x) * self.calls


def test_a_program_that_differs_from_the_eager_net_is_refused_and_not_written(tmp_path):
    path = tmp_path / "net.pt2"
    with pytest.raises(ExportError, match=r"differs from the eager net by .* on the example batch"
                                          r".*nothing was written"):
        export(Counter(), path, torch.randn(6, 4))
    assert os.listdir(tmp_path) == []


def test_a_tolerance_of_zero_refuses_onnx_rounding(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3))
    with pytest.raises(ExportError, match="above atol=0"):
        export(net, tmp_path / "net.onnx", torch.randn(32, 16), atol=0.0, rtol=0.0)
    assert os.listdir(tmp_path) == []


def test_a_torchfit_model_exports_its_net_with_fixed_shapes(tmp_path):
    torch.manual_seed(0)
    model = torchfit.Model(nn.Sequential(nn.Linear(4, 3))).compile(nn.CrossEntropyLoss(), "sgd", device="cpu")
    report = export(model, tmp_path / "m.pt2", (torch.randn(1, 4), torch.zeros(1)), dynamic_batch=False,
                    weights=tmp_path / "w.safetensors")
    assert [n for n, _ in report.checks] == [1, 1, 1, 1] and report.max_abs_diff == 0.0
    assert set(safetensors_torch.load_file(str(tmp_path / "w.safetensors"))) == {"0.weight", "0.bias"}
    assert "largest difference from the eager net 0" in str(report)
    assert model.net.training  # the net's mode is restored


def test_arguments_are_checked_before_anything_is_written(tmp_path):
    net = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="end the path in .pt2 or .onnx"):
        export(net, tmp_path / "net.bin", torch.randn(4, 4))
    with pytest.raises(ValueError, match="formats are 'pt2'"):
        export(net, tmp_path / "net.bin", torch.randn(4, 4), format="tflite")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export(net, tmp_path / "missing" / "net.pt2", torch.randn(4, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        export(net, tmp_path / "net.pt2", torch.randn(1, 4))
    with pytest.raises(ValueError, match="disagree"):
        export(nn.Bilinear(4, 3, 2), tmp_path / "net.pt2", ((torch.randn(4, 4), torch.randn(5, 3)),))
    with pytest.raises(TypeError, match="needs a torchfit Model or an nn.Module"):
        export(lambda x: x, tmp_path / "net.pt2", torch.randn(4, 4))
    assert os.listdir(tmp_path) == []


def test_a_model_subclass_with_its_own_layers_exports_itself(tmp_path):
    class Net(torchfit.Model):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    model = Net().compile(nn.CrossEntropyLoss(), "sgd", device="cpu")
    report = export(model, tmp_path / "m.pt2", (torch.randn(5, 4), torch.zeros(5)), weights=False)
    assert report.max_abs_diff == 0.0 and report.weights_path is None
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.randn(9, 4)
    torch.testing.assert_close(program(x), model.fc(x))
