import pytest

from seqrl.errors import PresetError
from seqrl.presets import AGENTS_DIR, ENVS_DIR, load_agent, load_env, parse_overrides


def test_presets_load_with_paper_defaults():
    dt = load_agent("dt")
    assert dt.agent == "dt" and dt.policy.context_len == 20 and dt.trainer.lr == 1e-4 and dt.trainer.grad_clip == 0.25
    assert dt.source.kind == "dataset" and dt.source.batch_size == 64
    gtrxl = load_agent("gtrxl")
    assert gtrxl.agent == "ppo" and gtrxl.policy.backbone == "gtrxl" and gtrxl.policy.gtrxl.memory == 128
    assert gtrxl.source.kind == "env" and gtrxl.trainer.warmup_steps == 0
    assert load_agent("bc").policy.hidden_dim == 256
    hopper = load_env("hopper")
    assert hopper.env_id == "Hopper-v5" and hopper.ref_max_score == 3234.3
    assert hopper.dataset_id("medium") == "seqrl/hopper/medium-v0"
    for name in ("halfcheetah", "walker2d", "pendulum"):
        load_env(name)


@pytest.mark.parametrize("name", sorted(p.stem for p in AGENTS_DIR.glob("*.toml")))
def test_every_agent_preset_loads_and_passes_its_agents_checks(name):
    from seqrl.policies import policy_class

    preset = load_agent(name)  # unknown keys, ranges and the agent's own cross-checks (check_preset)
    assert preset.source.kind in policy_class(preset.agent).sources


@pytest.mark.parametrize("name", sorted(p.stem for p in ENVS_DIR.glob("*.toml")))
def test_every_env_preset_loads(name):
    assert load_env(name).name == name


def test_overrides():
    o = parse_overrides(["trainer.steps=10", "policy.dropout=0.0", "trainer.device=cuda", "trainer.betas=[0.8, 0.9]"])
    p = load_agent("dt", o)
    assert p.trainer.steps == 10 and p.policy.dropout == 0.0 and p.trainer.device == "cuda"
    assert p.trainer.betas == (0.8, 0.9)


@pytest.mark.parametrize("override,message", [
    ("trainer.stepz=10", "unknown key 'trainer.stepz'"),
    ("policy.embed_dim=1.5", "policy.embed_dim: expected an integer"),
    ("policy.activation=tanh", "policy.activation: 'tanh' is not one of"),
    ("policy.n_heads=3", "not divisible"),
    ("trainer.amp=yes", "trainer.amp: expected true or false"),
    ("runner.steps=10", "unknown key 'runner' in agent preset"),
    ("mystery=1", "unknown key 'mystery'"),
    ("trainer.steps", "not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(PresetError, match=message):
        load_agent("dt", parse_overrides([override]))


def test_unknown_presets():
    with pytest.raises(PresetError, match="unknown agent preset 'dtt'.*'dt'"):
        load_agent("dtt")
    with pytest.raises(PresetError, match="unknown env preset 'hoper'"):
        load_env("hoper")
    with pytest.raises(PresetError, match="unknown quality 'great'"):
        load_env("hopper").dataset_id("great")
    with pytest.raises(PresetError, match="unknown key 'collect.algoo'"):
        load_env("hopper", {"collect": {"algoo": "SAC"}})


def test_unknown_agent_in_a_file(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('agent = "ppo9"\n')
    with pytest.raises(PresetError, match="unknown agent 'ppo9'"):
        load_agent(f)
    f.write_text('agent = "dt"\n[policy\n')
    with pytest.raises(PresetError, match="not valid TOML"):
        load_agent(f)
