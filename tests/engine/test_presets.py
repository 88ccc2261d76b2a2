"""The preset and speed groups compose into the settings their files promise."""
from __future__ import annotations

from detkit.engine.config import compose_run_config


def _leaves(node, prefix=""):
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}


def test_cpu_preset_brings_its_method_part():
    paper = compose_run_config(["preset=paper"])
    cpu = compose_run_config(["preset=cpu"])
    assert paper["method"]["model"]["anchor_sizes"] == [128, 256, 512]
    model = cpu["method"]["model"]
    assert model["anchor_sizes"] == "auto" and model["roi_pool_mode"] == "align"  # preset/method/cpu_faster_rcnn.yaml
    assert cpu["amp"] == "auto" and cpu["channels_last"] is True and cpu["backbone"]["width"] == 0.5


def test_speed_fast_sets_amp_and_channels_last_only():
    plain = compose_run_config([])
    fast = compose_run_config(["speed=fast"])
    assert (plain["amp"], plain["channels_last"]) == ("none", False)
    assert (fast["amp"], fast["channels_last"]) == ("auto", True)
    flat_plain, flat_fast = _leaves(plain), _leaves(fast)
    changed = {k for k in flat_plain if flat_plain[k] != flat_fast.get(k)}
    assert changed == {"amp", "channels_last", "method.model.channels_last"}  # the model follows the top-level key


def test_command_line_wins_over_speed_fast():
    conf = compose_run_config(["speed=fast", "amp=fp16", "channels_last=false"])
    assert (conf["amp"], conf["channels_last"]) == ("fp16", False)


def test_train_command_takes_the_groups_as_groups():
    from detkit.cli.train import GROUPS, unknown_key_message
    assert {"data", "method", "backbone", "preset", "speed"} <= set(GROUPS)
    assert unknown_key_message(["speed=fast", "preset=cpu", "solver.lr=0.1"]) is None
    assert "speeed" in unknown_key_message(["speeed=fast"])
