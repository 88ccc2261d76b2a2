"""detkit.analysis.architecture.summary on tiny hand-built nets, against hand computations."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detkit.analysis.architecture import SummaryError, format_table, summarize, to_markdown


def test_single_conv_params_and_macs_by_hand():
    s = summarize(nn.Conv2d(3, 8, 3, padding=1), 10)
    (row,) = s.rows
    assert row.output_shape == (8, 10, 10)
    assert row.params == 3 * 8 * 3 * 3 + 8 == 224
    assert row.macs == 8 * 10 * 10 * 3 * 3 * 3 == 21_600  # Cout·H·W·Cin·kh·kw, bias not counted
    grouped = summarize(nn.Conv2d(4, 8, 3, groups=2), 6, in_channels=4).rows[0]
    assert grouped.params == 8 * 2 * 9 + 8 and grouped.macs == 8 * 4 * 4 * 2 * 9


def test_alexnet_first_layer_on_227():
    row = summarize(nn.Conv2d(3, 96, 11, stride=4), 227).rows[0]
    assert row.output_shape == (96, 55, 55)
    assert row.params == 34_944  # 34,848 weights + 96 biases
    assert row.macs == 96 * 55 * 55 * 3 * 11 * 11
    assert row.stride == (4, 4) and row.rf == (11, 11)


def test_three_stacked_3x3_convs_see_7x7():
    net = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=1) for _ in range(3)])
    s = summarize(net, 16, in_channels=2)
    assert [r.rf[0] for r in s.rows] == [3, 5, 7]
    assert s.output_rf == (7, 7) and s.output_stride == (1, 1)


def test_conv_stride2_then_pool_stride2():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2))
    s = summarize(net, 16, in_channels=1)
    # conv: r = 1 + 2·1 = 3, j = 2; pool: r = 3 + 1·2 = 5, j = 4
    assert s.output_stride == (4, 4) and s.output_rf == (5, 5)
    assert s.rows[1].rf == (3, 3)  # the ReLU passes it through
    # centre of the first unit: conv 0.5 + (1 - 1)·1 = 0.5; pool 0.5 + (0.5 - 0)·2 = 1.5
    assert s.rows[-1].rf_start == (1.5, 1.5)


def test_dilation_and_rectangular_input():
    s = summarize(nn.Conv2d(1, 1, 3, dilation=2), (12, 20), in_channels=1)
    assert s.output_shape == (1, 8, 16) and s.output_rf == (5, 5)


class Branches(nn.Module):
    """Inception-like: 1x1 | 3x3 -> 3x3 | pool 3x3 s1 -> 1x1, concatenated; then a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1)
        self.b = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
        self.c = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), nn.Conv2d(2, 2, 1))
        self.down = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.short = nn.Conv2d(6, 6, 1, stride=2)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x), self.c(x)], 1)
        return self.down(y) + self.short(y)


def test_branches_take_the_maximum():
    s = summarize(Branches(), 8, in_channels=2)
    assert s.row("a").rf == (1, 1) and s.row("b.1").rf == (5, 5) and s.row("c.1").rf == (3, 3)
    # cat: max(1, 5, 3) = 5; down: 5 + 2·1 = 7; short: 5 + 0 = 5; add: max(7, 5) = 7
    assert s.row("down").rf == (7, 7) and s.row("short").rf == (5, 5)
    assert s.output_rf == (7, 7) and s.output_stride == (2, 2)


class Functional(nn.Module):
    def forward(self, x):  # pooling without a module: the functional rule must see it
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1)), 3, 2)


def test_functional_pooling_inside_a_custom_module():
    s = summarize(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), Functional()), 8, in_channels=1)
    assert s.output_rf == (5, 5) and s.output_stride == (2, 2)


def test_interpolation_makes_rf_unknown():
    class Up(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2.0)

    s = summarize(nn.Sequential(nn.Conv2d(1, 1, 3), Up()), 8, in_channels=1)
    assert s.rows[-1].rf is None and "?" in format_table(s)


class Tiny(nn.Module):
    """Shared module called twice, an unused head, a frozen layer, flatten + fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.unused = nn.Linear(5, 5)
        self.fc = nn.Linear(4 * 4 * 4, 10)
        self.stem.requires_grad_(False)

    def forward(self, x):
        x = self.shared(self.shared(self.stem(x)))
        return self.fc(x.flatten(1))


def test_totals_are_row_sums_and_count_every_parameter_once():
    model = Tiny()
    s = summarize(model, 8)
    assert s.total_params == sum(r.params for r in s.rows) == sum(p.numel() for p in model.parameters())
    assert s.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert s.total_macs == sum(r.macs for r in s.rows)
    shared = [r for r in s.rows if r.name == "shared"]
    assert [r.params for r in shared] == [148, 0]  # parameters on the first call only
    assert [r.macs for r in shared] == [4 * 16 * 4 * 9] * 2  # MACs on every call
    assert s.row("unused").called is False and s.row("unused").params == 30
    fc = s.row("fc")
    assert fc.macs == 64 * 10 and fc.stride is None
    # flatten of a 4×4 map with jump 2 and rf 7 (stem 3, shared 7, shared 11): 11 + 3·2 = 17
    assert s.row("shared").rf == (7, 7) and fc.rf == (17, 17)


def test_depth_merges_rows_into_their_module():
    model = Branches()
    full, merged = summarize(model, 8, in_channels=2), summarize(model, 8, in_channels=2, depth=1)
    assert [r.name for r in merged.rows] == ["a", "b", "c", "down", "short"]
    assert merged.row("b").params == sum(r.params for r in full.rows if r.name.startswith("b."))
    assert merged.row("b").rf == (5, 5)
    assert merged.total_params == full.total_params and merged.total_macs == full.total_macs
    assert [r.name for r in summarize(model, 8, in_channels=2, depth=0).rows] == ["Branches"]


def test_meta_and_real_pass_agree_and_model_state_is_restored():
    model = Tiny().train()
    meta, real = summarize(model, 8), summarize(model, 8, device="cpu")
    assert meta.rows == real.rows
    assert model.training and all(m.training for m in model.modules())
    assert model.stem.weight.device.type == "cpu"


def test_backbone_is_summarised_in_two_parts():
    from detkit.backbones.base import Backbone

    bb = Backbone(trunk=nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1)),
                  region_head=nn.Sequential(nn.Flatten(1), nn.Linear(8 * 3 * 3, 16)),
                  out_channels=8, stride=2, roi_size=3, head_channels=16, input_size=16, name="toy")
    s = summarize(bb, (10, 14))
    trunk, head = s.part("trunk"), s.part("region_head")
    assert trunk.output_shape == (8, 5, 7) and trunk.output_stride == (2, 2)
    assert head.input_shape == (1, 8, 3, 3) and head.output_shape == (16,)
    assert s.total_params == trunk.total_params + head.total_params == sum(p.numel() for p in bb.parameters())
    assert [r.name for r in s.rows] == ["trunk.0", "region_head.0", "region_head.1"]
    text = format_table(s)
    assert "== trunk ==" in text and "== region_head ==" in text and "toy: all parts" in text


def test_text_and_markdown_show_rows_and_totals():
    s = summarize(nn.Sequential(nn.Conv2d(3, 96, 11, stride=4)), 227)
    text, md = format_table(s), to_markdown(s)
    for out in (text, md):
        assert "96×55×55" in out and "34,944" in out and f"{s.total_macs:,}" in out
    assert md.count("\n| ") == 2 and "---:" in md


@pytest.mark.parametrize("size", [0, (3,), (2, -1), 2.5, "224", True])
def test_bad_input_size(size):
    with pytest.raises(SummaryError, match="input_size"):
        summarize(nn.Conv2d(3, 1, 1), size)


def test_forward_failure_names_the_module():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 7))
    with pytest.raises(SummaryError, match=r"'1' \(Conv2d\)"):
        summarize(net, 5)
