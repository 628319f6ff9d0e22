"""What a rollback leaves alone, per kind of root."""

from patchd.daemon.compose import LIVE_ROOT_EXCLUDE, restore_exclusions


def test_booted_root_keeps_user_data_logs_and_patchd_state():
    exclude = restore_exclusions("/", "/var/lib/patchd")
    assert set(exclude) == set(LIVE_ROOT_EXCLUDE) | {"var/lib/patchd"}
    assert {"home", "var/log"} <= set(exclude)


def test_managed_root_is_restored_whole_except_state_inside_it(tmp_path):
    root = tmp_path / "root"
    (root / "var/lib/patchd").mkdir(parents=True)
    assert restore_exclusions(str(root), str(tmp_path / "state")) == []
    assert restore_exclusions(str(root), str(root / "var/lib/patchd")) == ["var/lib/patchd"]
    assert restore_exclusions(str(root), str(tmp_path), ("var/lib/dpkg/lock",)) == [
        "var/lib/dpkg/lock"]
