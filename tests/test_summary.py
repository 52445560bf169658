import pytest
import torch
from torch import nn

from torchfit.summary import collect_rows, render, summary

MB = 1024**2


def seed_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5),
        nn.MaxPool2d(2),
        nn.Dropout2d(0.1),
        nn.AdaptiveMaxPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


# Worked out by hand: conv params = out * (in * k * k) + out, linear = out * in + out.
CNN_ROWS = [
    ("Conv2d-1", "[-1, 32, 26, 26]", 32 * 1 * 9 + 32),
    ("MaxPool2d-2", "[-1, 32, 13, 13]", 0),
    ("Conv2d-3", "[-1, 64, 9, 9]", 64 * 32 * 25 + 64),
    ("MaxPool2d-4", "[-1, 64, 4, 4]", 0),
    ("Dropout2d-5", "[-1, 64, 4, 4]", 0),
    ("AdaptiveMaxPool2d-6", "[-1, 64, 1, 1]", 0),
    ("Flatten-7", "[-1, 64]", 0),
    ("Linear-8", "[-1, 32]", 64 * 32 + 32),
    ("ReLU-9", "[-1, 32]", 0),
    ("Linear-10", "[-1, 10]", 32 * 10 + 10),
]
CNN_ACTIVATIONS = 32 * 26 * 26 + 32 * 13 * 13 + 64 * 9 * 9 + 2 * 64 * 4 * 4 + 64 + 64 + 32 + 32 + 10


def quiet(net, *args, **kwargs):
    return summary(net, *args, print_fn=None, **kwargs)


def rows_of(df):
    return list(df.itertuples(index=False, name=None))


def test_seed_cnn_rows_shapes_and_params():
    df = quiet(seed_cnn(), (1, 28, 28))
    assert list(df.columns) == ["Layer (type)", "Output Shape", "Param #"]
    assert rows_of(df) == CNN_ROWS
    assert df["Param #"].dtype.kind == "i"


def test_seed_cnn_totals_and_sizes():
    net = seed_cnn()
    attrs = quiet(net, (1, 28, 28)).attrs
    total = sum(p.numel() for p in net.parameters())
    assert total == 53_994
    assert attrs["total_params"] == total
    assert attrs["trainable_params"] == total
    assert attrs["non_trainable_params"] == 0
    assert attrs["input_size_mb"] == pytest.approx(28 * 28 * 4 / MB)
    assert attrs["forward_backward_size_mb"] == pytest.approx(2 * CNN_ACTIVATIONS * 4 / MB)
    assert attrs["params_size_mb"] == pytest.approx(total * 4 / MB)
    assert attrs["total_size_mb"] == pytest.approx(
        attrs["input_size_mb"] + attrs["forward_backward_size_mb"] + attrs["params_size_mb"]
    )


def test_batch_size_replaces_the_batch_dim():
    df = quiet(seed_cnn(), (1, 28, 28), batch_size=64)
    assert df["Output Shape"][0] == "[64, 32, 26, 26]"
    assert df["Output Shape"].iloc[-1] == "[64, 10]"


def test_frozen_params_are_non_trainable():
    net = seed_cnn()
    for p in net[0].parameters():
        p.requires_grad_(False)
    attrs = quiet(net, (1, 28, 28)).attrs
    assert attrs["total_params"] == 53_994
    assert attrs["trainable_params"] == 53_994 - 320
    assert attrs["non_trainable_params"] == 320


def test_printed_table_through_print_fn():
    lines = []
    summary(seed_cnn(), (1, 28, 28), print_fn=lines.append)
    text = "\n".join(lines)
    assert len(lines) > 1  # one call per line, like Keras
    assert "Layer (type)" in lines[1] and "Output Shape" in lines[1] and "Param #" in lines[1]
    assert "Total params: 53,994" in lines
    assert "Trainable params: 53,994" in lines
    assert "Non-trainable params: 0" in lines
    assert "Input size (MB): 0.003" in lines
    assert any(line.startswith("Conv2d-3") and line.endswith("51,264") for line in lines)
    assert "Estimated Total Size (MB): " in text


def test_default_print_fn_prints(capsys):
    summary(seed_cnn(), (1, 28, 28))
    out = capsys.readouterr().out
    assert "Layer (type)" in out and "Total params: 53,994" in out


def test_long_shapes_widen_the_table():
    class HeadWithAVeryLongClassNameIndeed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            y = self.fc(x)
            return {"a_rather_long_output_name": y, "another_long_output_name_here": y}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = HeadWithAVeryLongClassNameIndeed()

        def forward(self, x):
            return self.head(x)

    lines = []
    summary(Net(), (3,), print_fn=lines.append)
    table_end = lines.index("=" * len(lines[0]), 3)
    table = lines[: table_end + 1]
    assert len(set(map(len, table))) == 1  # rules, header and rows all line up
    assert any("{'a_rather_long_output_name': [-1, 4]" in line for line in table)
    names = [line.split()[0] for line in table[3:table_end]]
    assert names == ["HeadWithAVeryLongClassNameIndeed-1", "Linear-2"]
    assert [line.split()[-1] for line in table[3:table_end]] == ["0", "16"]


def test_net_left_as_found_with_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 2),
    )
    net.train()
    net[3].eval()  # mixed modes must come back exactly, not flattened by net.train()
    modes = [m.training for m in net.modules()]
    before = {k: v.clone() for k, v in net.state_dict().items()}

    df = quiet(net, (3, 8, 8))

    assert df["Layer (type)"][1] == "BatchNorm2d-2"
    assert df["Param #"][1] == 8
    assert [m.training for m in net.modules()] == modes
    after = net.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert int(after["1.num_batches_tracked"]) == 0
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_forward_runs_in_eval_mode_without_grad():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return x

    net = nn.Sequential(Probe(), nn.Linear(2, 2)).train()
    quiet(net, (2,))
    assert seen == [(False, False)]
    assert net[0].training and torch.is_grad_enabled()


def test_multiple_inputs():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(5, 4)

        def forward(self, x1, x2):
            return self.a(x1) + self.b(x2)

    df = quiet(TwoInputs(), [(3,), (5,)])
    assert rows_of(df) == [("Linear-1", "[-1, 4]", 16), ("Linear-2", "[-1, 4]", 24)]
    assert df.attrs["input_size_mb"] == pytest.approx((3 + 5) * 4 / MB)


def test_dict_input_data_calls_with_kwargs():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, *, features, scale):
            return self.fc(features) * scale

    data = {"features": torch.ones(5, 3), "scale": torch.full((5, 1), 2.0)}
    df = quiet(Kw(), input_data=data)
    assert rows_of(df) == [("Linear-1", "[-1, 2]", 8)]
    assert df.attrs["input_size_mb"] == pytest.approx((3 + 1) * 4 / MB)


class TupleAndDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 6)

    def forward(self, x):
        y = self.fc(x)
        return (y[:, :4], y[:, 4:], "not a tensor"), {"logits": y[:, :2], "score": y.sum()}


class WrapsTupleAndDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = TupleAndDict()
        self.act = nn.ReLU()

    def forward(self, x):
        (a, b, _), d = self.block(x)
        return self.act(a), d


def test_tuple_and_dict_outputs():
    df = quiet(WrapsTupleAndDict(), (3,))
    assert rows_of(df) == [
        ("TupleAndDict-1", "[[[-1, 4], [-1, 2], -], {'logits': [-1, 2], 'score': []}]", 0),
        ("Linear-2", "[-1, 6]", 24),
        ("ReLU-3", "[-1, 4]", 0),
    ]


def test_lstm_tuple_output():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)
            self.fc = nn.Linear(16, 1)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out[:, -1])

    df = quiet(Seq(), (5, 8))
    # h_n and c_n are (num_layers, batch, hidden): only a leading batch dim becomes -1.
    assert rows_of(df) == [
        ("LSTM-1", "[[-1, 5, 16], [[1, 2, 16], [1, 2, 16]]]", 4 * 16 * (8 + 16) + 2 * 4 * 16),
        ("Linear-2", "[-1, 1]", 17),
    ]


def test_embedding_with_input_data_and_with_dtypes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(100, 16), nn.Flatten(), nn.Linear(7 * 16, 2))
    ids = torch.randint(0, 100, (4, 7))
    df = quiet(net, input_data=ids)
    assert rows_of(df) == [
        ("Embedding-1", "[-1, 7, 16]", 1600),
        ("Flatten-2", "[-1, 112]", 0),
        ("Linear-3", "[-1, 2]", 226),
    ]
    assert df.attrs["input_size_mb"] == pytest.approx(7 * 8 / MB)  # int64 ids, one sample
    assert rows_of(quiet(net, (7,), dtypes=[torch.long])) == rows_of(df)
    # Integer dummies must be valid ids for any vocabulary, even one of size 1.
    assert quiet(nn.Embedding(1, 3), (7,), dtypes=torch.long)["Output Shape"][0] == "[-1, 7, 3]"


def test_no_parameters():
    df = quiet(nn.Sequential(nn.ReLU(), nn.Flatten()), (2, 3))
    assert rows_of(df) == [("ReLU-1", "[-1, 2, 3]", 0), ("Flatten-2", "[-1, 6]", 0)]
    assert df.attrs["total_params"] == 0 and df.attrs["params_size_mb"] == 0


def test_bare_leaf_module_gets_a_row():
    df = quiet(nn.Linear(10, 2), (10,))
    assert rows_of(df) == [("Linear-1", "[-1, 2]", 22)]


class Block(nn.Module):
    """A non-container with its own parameter and a child: both rows, nothing twice."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) * self.scale


def test_nested_module_counts_each_parameter_once_in_call_order():
    net = nn.Sequential(Block(), nn.ReLU())
    df = quiet(net, (4,))
    assert rows_of(df) == [("Block-1", "[-1, 4]", 4), ("Linear-2", "[-1, 4]", 20), ("ReLU-3", "[-1, 4]", 0)]
    assert df["Param #"].sum() == df.attrs["total_params"] == 24


def test_layer_called_twice_appears_twice_but_counts_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.fc(self.act(self.fc(x)))

    df = quiet(Twice(), (4,))
    assert list(df["Layer (type)"]) == ["Linear-1", "ReLU-2", "Linear-3"]
    assert list(df["Param #"]) == [20, 0, 20]
    assert df.attrs["total_params"] == 20


def test_tied_weights_counted_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    df = quiet(nn.Sequential(emb, head), input_data=torch.zeros(2, 3, dtype=torch.long))
    assert df.attrs["total_params"] == 40


def test_uncalled_child_params_go_to_the_calling_parent():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    net = Attn()
    df = quiet(net, (5, 16))
    # out_proj is used through its weight, never called, so MultiheadAttention carries it.
    assert rows_of(df) == [("MultiheadAttention-1", "[[-1, 5, 16], [-1, 5, 5]]", 16 * 48 + 48 + 16 * 16 + 16)]
    assert df["Param #"].sum() == sum(p.numel() for p in net.parameters())


def test_wrong_input_shape_error_is_chained_and_net_restored():
    net = seed_cnn()
    net.train()
    with pytest.raises(RuntimeError) as info:
        quiet(net, (1, 1, 28, 28))  # batch dim included by mistake
    message = str(info.value)
    assert "input_shape=(1, 1, 28, 28)" in message
    assert "ONE sample without the batch dim" in message
    assert info.value.__cause__ is not None and not isinstance(info.value.__cause__, TypeError)
    assert all(m.training for m in net.modules())
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_missing_input_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"input_shape=\(C, H, W\).*input_data="):
        summary(seed_cnn())
    with pytest.raises(TypeError, match="not both"):
        summary(seed_cnn(), (1, 28, 28), input_data=torch.zeros(1, 1, 28, 28))
    with pytest.raises(TypeError, match="input_shape"):
        summary(seed_cnn(), (1, 28.0, 28))
    with pytest.raises(ValueError, match="dtypes"):
        summary(seed_cnn(), [(1, 28, 28), (3,)], dtypes=[torch.long])


def test_double_precision_net_gets_matching_dummy_inputs():
    df = quiet(nn.Linear(3, 2).double(), (3,))
    assert df.attrs["input_size_mb"] == pytest.approx(3 * 8 / MB)


def test_collect_rows_and_render_are_usable_on_their_own():
    rows = collect_rows(seed_cnn(), torch.zeros(3, 1, 28, 28))
    assert [(r.name, r.shape_text, r.params) for r in rows] == CNN_ROWS
    assert sum(r.output_bytes for r in rows) == CNN_ACTIVATIONS * 4
    totals = quiet(seed_cnn(), (1, 28, 28)).attrs
    text = render(rows, totals)
    assert text.splitlines()[3].split() == ["Conv2d-1", "[-1,", "32,", "26,", "26]", "320"]
    assert "Total params: 53,994" in text


# ----------------------------------------------------------------- torchkeras 1.x parameters
def embedding_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 4), nn.Flatten(), nn.Linear(6 * 4, 2))


EMBEDDING_ROWS = [("Embedding-1", "[-1, 6, 4]", 200), ("Flatten-2", "[-1, 24]", 0), ("Linear-3", "[-1, 2]", 50)]


@pytest.mark.parametrize(
    "spec", [torch.LongTensor, torch.cuda.LongTensor, torch.long, "torch.LongTensor", "int64", [torch.LongTensor]]
)
def test_input_dtype_accepts_tensor_types_dtypes_and_names(spec):
    df = quiet(embedding_net(), (6,), input_dtype=spec)
    assert rows_of(df) == EMBEDDING_ROWS
    assert df.attrs["input_size_mb"] == pytest.approx(6 * 8 / MB)  # int64 dummies, one sample


def test_float_tensor_types_set_the_dummy_dtype():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.dtype)
            return x

    quiet(Probe(), (3,), input_dtype=torch.FloatTensor)
    quiet(Probe(), (3,), input_dtype=torch.cuda.FloatTensor)  # the net's device decides, not the type
    quiet(Probe(), (3,), input_dtype=torch.DoubleTensor)
    assert seen == [torch.float32, torch.float32, torch.float64]


def test_torchkeras_1x_positional_order_and_batch_size_minus_one():
    # torchkeras 1.x: summary(model, input_shape, input_dtype=torch.FloatTensor, batch_size=-1)
    lines = []
    df = summary(embedding_net(), (6,), torch.LongTensor, -1, print_fn=lines.append)
    assert rows_of(df) == EMBEDDING_ROWS
    assert lines[1].split() == ["Layer", "(type)", "Output", "Shape", "Param", "#"]
    assert any(line.split() == ["Embedding-1", "[-1,", "6,", "4]", "200"] for line in lines)
    assert rows_of(summary(embedding_net(), (6,), torch.LongTensor, 32, print_fn=None))[0][1] == "[32, 6, 4]"


def test_a_list_of_input_dtypes_for_several_inputs():
    class TokensAndFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 3)
            self.fc = nn.Linear(2, 3)

        def forward(self, ids, feats):
            return self.emb(ids).mean(1) + self.fc(feats)

    df = quiet(TokensAndFeatures(), [(5,), (2,)], input_dtype=[torch.LongTensor, torch.FloatTensor])
    assert rows_of(df) == [("Embedding-1", "[-1, 5, 3]", 30), ("Linear-2", "[-1, 3]", 9)]
    assert df.attrs["input_size_mb"] == pytest.approx((5 * 8 + 2 * 4) / MB)


def test_eat_pytorch_time_series_summary_as_published():
    # "eat pytorch in 20 days", chapter 1-4 (covid time series), its Net and its summary call.
    import torchfit

    class Block(nn.Module):
        def forward(self, x, x_input):
            return torch.max((1 + x) * x_input[:, -1, :], torch.tensor(0.0))

    class Net(nn.Module):
        def __init__(self):
            super(Net, self).__init__()
            self.lstm = nn.LSTM(input_size=3, hidden_size=3, num_layers=5, batch_first=True)
            self.linear = nn.Linear(3, 3)
            self.block = Block()

        def forward(self, x_input):
            x = self.lstm(x_input)[0][:, -1, :]
            x = self.linear(x)
            return self.block(x, x_input)

    model = torchfit.Model(Net())
    df = model.summary(input_shape=(8, 3), input_dtype=torch.FloatTensor, print_fn=None)
    assert list(df["Layer (type)"]) == ["LSTM-1", "Linear-2", "Block-3"]
    assert list(df["Param #"]) == [480, 12, 0]  # the numbers the chapter prints
    assert df["Output Shape"][1] == "[-1, 3]" and df.attrs["total_params"] == 492


def test_input_dtype_errors_name_the_argument():
    with pytest.raises(TypeError, match="both input_dtype= and dtypes="):
        summary(embedding_net(), (6,), input_dtype=torch.long, dtypes=torch.long)
    with pytest.raises(ValueError, match=r"input_dtype must be .*torch.LongTensor.*got 'int128'"):
        summary(embedding_net(), (6,), input_dtype="int128")
    with pytest.raises(ValueError, match="input_dtype .*list of 2"):
        summary(embedding_net(), [(6,), (6,)], input_dtype=[torch.LongTensor])
    with pytest.raises(TypeError, match="input_dtype only applies to input_shape"):
        summary(embedding_net(), input_data=torch.zeros(2, 6, dtype=torch.long), input_dtype=torch.long)
    with pytest.raises(TypeError, match="batch_size"):
        summary(embedding_net(), (6,), torch.LongTensor, 0)


def test_data_parallel_wrapper_gets_no_row():
    net = nn.DataParallel(seed_cnn())  # without CUDA it runs the module as it is
    assert rows_of(quiet(net, (1, 28, 28))) == CNN_ROWS
