import threading

import pytest
import torch
from torch import nn

from ipex_runtime import CPUPool, MultiStreamModule, MultiStreamModuleHint
from ipex_runtime.multi_stream import _split_sizes


class Recorder(nn.Module):
    """A linear layer that records the batch each call got and the CPU mask it ran with."""

    def __init__(self, probe):
        super().__init__()
        self.linear = nn.Linear(6, 3)
        self.probe = probe
        self.calls = []
        self.lock = threading.Lock()

    def forward(self, x):
        with self.lock:
            self.calls.append((x.shape[0], self.probe.cpus_allowed(threading.get_native_id()),
                               torch.get_num_threads()))
        return self.linear(x)


@pytest.mark.parametrize("n, streams, sizes", [
    (6, 3, [2, 2, 2]), (7, 3, [3, 2, 2]), (8, 3, [3, 3, 2]), (2, 3, [1, 1]), (1, 4, [1]), (3, 3, [1, 1, 1]),
])
def test_split_sizes(n, streams, sizes):
    assert _split_sizes(n, streams) == sizes


def test_uneven_batch_split_matches_whole_batch(probe, two_cpus):
    a, b = two_cpus
    model = Recorder(probe)
    msm = MultiStreamModule(model, num_streams=2, cpu_pool=CPUPool([a, b]))
    assert [t.cpu_pool.core_ids for t in msm.tasks] == [[a], [b]]
    x = torch.randn(5, 6)
    torch.testing.assert_close(msm(x), model.linear(x))
    # Three items to the first stream (on core a), two to the second (on core b), one thread each.
    assert sorted(model.calls) == sorted([(3, [a], 1), (2, [b], 1)])


def test_batch_smaller_than_streams_uses_first_streams(probe, two_cpus):
    a, b = two_cpus
    model = Recorder(probe)
    msm = MultiStreamModule(model, num_streams=2, cpu_pool=CPUPool([a, b]))
    x = torch.randn(1, 6)
    torch.testing.assert_close(msm(x), model.linear(x))
    assert model.calls == [(1, [a], 1)]


def test_nested_hints_and_non_batch_dims(two_cpus):
    def model(pair, extras, scale, *, mask, note):
        x, bias = pair
        y = (x + bias) * scale * mask.unsqueeze(-1) + extras["t"].transpose(0, 1)
        return y.sum(-1), {"per_item": y, "t_back": extras["t"] * 2, "bias": bias, "note": note}

    pair = (torch.randn(5, 4), torch.randn(4))
    extras = {"t": torch.randn(4, 5), "unused": "kept"}
    mask = torch.rand(5)
    msm = MultiStreamModule(
        model, num_streams=2, cpu_pool=CPUPool(list(two_cpus)),
        input_split_hint=MultiStreamModuleHint((0, None), {"t": 1}, None, mask=0),
        output_concat_hint=MultiStreamModuleHint(0, {"per_item": 0, "t_back": 1, "bias": None}),
    )
    got = msm(pair, extras, 0.5, mask=mask, note="hi")
    want = model(pair, extras, 0.5, mask=mask, note="hi")
    assert isinstance(got, tuple) and isinstance(got[1], dict)
    torch.testing.assert_close(got[0], want[0])
    for key in ("per_item", "t_back", "bias"):
        torch.testing.assert_close(got[1][key], want[1][key])
    assert got[1]["note"] == "hi"  # no hint: the first stream's value


def test_dict_output_from_keyword_hints_and_list_inputs(two_cpus):
    def model(xs):
        return {"sum": xs[0] + xs[1], "first": xs[0]}

    xs = [torch.randn(4, 3), torch.randn(4, 3)]
    msm = MultiStreamModule(model, num_streams=2, cpu_pool=CPUPool(list(two_cpus)),
                            input_split_hint=MultiStreamModuleHint([0, 0]),
                            output_concat_hint=MultiStreamModuleHint(sum=0, first=0))
    got = msm(xs)
    torch.testing.assert_close(got["sum"], xs[0] + xs[1])
    torch.testing.assert_close(got["first"], xs[0])


def test_no_concat_returns_stream_outputs(two_cpus):
    model = nn.Linear(6, 2)
    msm = MultiStreamModule(model, num_streams=2, cpu_pool=CPUPool(list(two_cpus)), concat_output=False)
    x = torch.randn(3, 6)
    outputs = msm(x)
    assert isinstance(outputs, list) and len(outputs) == 2
    torch.testing.assert_close(outputs[0], model(x[:2]))
    torch.testing.assert_close(outputs[1], model(x[2:]))
    torch.testing.assert_close(torch.cat(outputs), model(x))


def test_one_stream_runs_pinned_in_caller(probe, two_cpus):
    a, b = two_cpus
    model = Recorder(probe)
    msm = MultiStreamModule(model, num_streams=1, cpu_pool=CPUPool([b]))
    assert msm.tasks == [] and msm.get_stream_number() == 1
    x = torch.randn(4, 6)
    torch.testing.assert_close(msm(x), model.linear(x))
    assert model.calls == [(4, [b], 1)]
    msm.concat_output = False
    assert len(msm(x)) == 1


def test_auto_streams_and_too_many_streams(two_cpus):
    pool = CPUPool(list(two_cpus))
    assert MultiStreamModule(nn.Identity(), cpu_pool=pool).num_streams == 2
    assert MultiStreamModule(nn.Identity(), num_streams="auto", cpu_pool=pool).num_streams == 2
    with pytest.warns(UserWarning, match="more than the 2 core"):
        msm = MultiStreamModule(nn.Identity(), num_streams=5, cpu_pool=pool)
    assert msm.num_streams == 2
    default = MultiStreamModule(nn.Identity())
    assert default.cpu_pool == CPUPool()


def test_tiny_bert_output_through_streams(two_cpus):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 100, (3, 7))
    msm = MultiStreamModule(model, num_streams=2, cpu_pool=CPUPool(list(two_cpus)),
                            output_concat_hint=MultiStreamModuleHint(last_hidden_state=0, pooler_output=0))
    with torch.no_grad():
        got, want = msm(ids), model(ids)
    torch.testing.assert_close(got["last_hidden_state"], want.last_hidden_state)
    torch.testing.assert_close(got["pooler_output"], want.pooler_output)


def test_stream_exception_reaches_caller(two_cpus):
    def model(x):
        if x[0, 0] < 0:
            raise RuntimeError("bad slice")
        return x

    msm = MultiStreamModule(model, num_streams=2, cpu_pool=CPUPool(list(two_cpus)))
    x = torch.ones(4, 2)
    x[2:] = -1
    with pytest.raises(RuntimeError, match="bad slice"):
        msm(x)
    torch.testing.assert_close(msm(torch.ones(4, 2)), torch.ones(4, 2))


def test_errors(two_cpus):
    pool = CPUPool(list(two_cpus))
    with pytest.raises(ValueError, match="positive int or 'AUTO'"):
        MultiStreamModule(nn.Identity(), num_streams="many", cpu_pool=pool)
    with pytest.raises(ValueError, match="at least 1"):
        MultiStreamModule(nn.Identity(), num_streams=0, cpu_pool=pool)
    with pytest.raises(TypeError, match="positive int or 'AUTO'"):
        MultiStreamModule(nn.Identity(), num_streams=1.5, cpu_pool=pool)
    with pytest.raises(TypeError, match="CPUPool"):
        MultiStreamModule(nn.Identity(), cpu_pool=list(two_cpus))
    with pytest.raises(TypeError, match=r"entry args\[0\]\[1\] is str"):
        MultiStreamModuleHint((0, "batch"))
    with pytest.raises(ValueError, match="not both"):
        MultiStreamModule(nn.Identity(), cpu_pool=pool, output_concat_hint=MultiStreamModuleHint(0, out=0))
    msm = MultiStreamModule(lambda x, y: x, num_streams=2, cpu_pool=pool,
                            input_split_hint=MultiStreamModuleHint(0, 0))
    with pytest.raises(ValueError, match="disagree on the batch size"):
        msm(torch.ones(4), torch.ones(3))
    with pytest.raises(ValueError, match="selects no tensor"):
        MultiStreamModule(lambda x: x, num_streams=2, cpu_pool=pool, input_split_hint=MultiStreamModuleHint(None))(
            torch.ones(2))
    with pytest.raises(TypeError, match=r"args\[0\]: the split hint is dim 0 but the value is list"):
        MultiStreamModule(lambda x: x, num_streams=2, cpu_pool=pool)([1, 2])
    with pytest.raises(TypeError, match="output_concat_hint that matches"):
        MultiStreamModule(lambda x: (x, x), num_streams=2, cpu_pool=pool)(torch.ones(2))
    with pytest.raises(ValueError, match="empty batch"):
        MultiStreamModule(lambda x: x, num_streams=2, cpu_pool=pool)(torch.ones(0, 2))


def test_unhinted_batch_tensor_is_refused(two_cpus):
    # Passed whole to every stream it broadcast against each slice: [4, 3] out for a batch of 2, no error.
    def model(x, y):
        return x * y

    x, y = torch.randn(2, 3), torch.randn(2, 3)
    msm = MultiStreamModule(model, 2, CPUPool(list(two_cpus)))
    with pytest.raises(ValueError, match=r"args\[1\] is a tensor with the batch size 2 .* does not mention it"):
        msm(x, y)
    both = MultiStreamModule(model, 2, CPUPool(list(two_cpus)), input_split_hint=MultiStreamModuleHint(0, 0))
    torch.testing.assert_close(both(x, y), model(x, y))
    # None in the hint passes it whole on purpose: each stream's row broadcasts against all of y.
    whole = MultiStreamModule(model, 2, CPUPool(list(two_cpus)), input_split_hint=MultiStreamModuleHint(0, None))
    torch.testing.assert_close(whole(x, y), torch.cat([x[:1] * y, x[1:] * y]))


def test_optional_hinted_input_may_be_none(two_cpus):
    def model(x, mask=None):
        return x if mask is None else x * mask[:, None]

    x = torch.randn(4, 3)
    msm = MultiStreamModule(model, 2, CPUPool(list(two_cpus)), input_split_hint=MultiStreamModuleHint(0, mask=0))
    torch.testing.assert_close(msm(x, mask=None), x)
    mask = torch.rand(4)
    torch.testing.assert_close(msm(x, mask=mask), model(x, mask))


def test_split_along_dim_1_gives_contiguous_inputs(two_cpus):
    lin = nn.Linear(4, 4)

    def seq_first(x):  # [seq, batch, features], flattened with .view as sequence-first code does
        s, b, f = x.shape
        return lin(x.view(s * b, f)).view(s, b, f)

    x = torch.randn(7, 6, 4)
    msm = MultiStreamModule(seq_first, 2, CPUPool(list(two_cpus)), input_split_hint=MultiStreamModuleHint(1),
                            output_concat_hint=MultiStreamModuleHint(1))
    with torch.no_grad():
        torch.testing.assert_close(msm(x), seq_first(x))


def test_output_without_a_concat_hint_is_an_error(two_cpus):
    """An output the hint did not cover came back as stream 0's slice only (batch 4 -> [2, 3]), silently; a
    misspelt hint key did the same."""
    def fn(x):
        return {"logits": x + 1, "hidden": x * 2, "scale": torch.ones(3)}

    x = torch.zeros(4, 3)
    partial = MultiStreamModule(fn, 2, CPUPool(list(two_cpus)), output_concat_hint=MultiStreamModuleHint(logits=0))
    with pytest.raises(ValueError, match=r"\['hidden'\].*does not mention it"):
        partial(x)
    typo = MultiStreamModule(fn, 2, CPUPool(list(two_cpus)), output_concat_hint=MultiStreamModuleHint(logit=0, hidden=0))
    with pytest.raises(ValueError, match=r"names \['logit'\]"):
        typo(x)
    # An explicit None takes the first stream's value (a batch-independent output).
    full = MultiStreamModule(fn, 2, CPUPool(list(two_cpus)),
                             output_concat_hint=MultiStreamModuleHint(logits=0, hidden=0, scale=None))
    out = full(x)
    assert out["hidden"].shape == (4, 3) and torch.equal(out["scale"], torch.ones(3))


def test_nested_output_without_a_concat_hint_is_an_error(two_cpus):
    """A tuple of tensors the hint did not mention (hidden_states, past_key_values) still came back as stream 0's."""
    def fn(x):
        return {"logits": x * 2, "hidden": (x + 1, x + 2)}

    msm = MultiStreamModule(fn, 2, CPUPool(list(two_cpus)), output_concat_hint=MultiStreamModuleHint(logits=0))
    with pytest.raises(ValueError, match=r"\['hidden'\].*does not mention it"):
        msm(torch.zeros(4, 3))
