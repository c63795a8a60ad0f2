import pytest

from utils.profiles import PROFILES, get_profile, resolve_profile_name


def test_default_is_smoke_without_gpu():
    assert resolve_profile_name(env={}, cuda=False) == "smoke"


def test_default_is_colab_with_gpu_and_hub():
    assert resolve_profile_name(env={}, cuda=True, hub=True) == "colab"


def test_gpu_without_hub_stays_offline():
    assert resolve_profile_name(env={}, cuda=True, hub=False) == "smoke"


def test_explicit_profile_wins():
    assert resolve_profile_name(env={"COURSE_PROFILE": "FULL"}, cuda=False) == "full"


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="not a profile; choose one of smoke, colab, full"):
        resolve_profile_name(env={"COURSE_PROFILE": "gpu"})


def test_every_profile_has_every_size():
    for p in PROFILES.values():
        assert p.spam.batch_size > 0 and p.summary.max_steps > 0 and p.qlora.epochs > 0
    assert not get_profile("smoke").online and get_profile("colab").online


def test_brief_sizes_on_colab():
    colab = get_profile("colab")
    assert (colab.summary.train, colab.summary.eval) == (100, 50)
    assert (colab.qlora.train, colab.qlora.eval) == (100, 50)
