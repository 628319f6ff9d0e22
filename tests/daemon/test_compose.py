"""What a rollback leaves alone, per kind of root."""

import pytest

from patchd.core import errors
from patchd.core.model import Family
from patchd.daemon.compose import LIVE_ROOT_EXCLUDE, detect_family, restore_exclusions


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


@pytest.mark.parametrize("database,family", [
    ("var/lib/dpkg/status", Family.DEB),
    ("var/lib/rpm/rpmdb.sqlite", Family.RPM),      # rpm >= 4.16 (openEuler 22.03)
    ("var/lib/rpm/Packages", Family.RPM),          # Berkeley DB (Kylin Server V10)
])
def test_family_is_probed_from_the_package_database(tmp_path, database, family):
    (tmp_path / database).parent.mkdir(parents=True)
    (tmp_path / database).write_text("")
    # An os-release that names another brand does not matter.
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/os-release").write_text("ID=kylin\n")
    assert detect_family(str(tmp_path)) is family


def test_root_without_package_database_is_refused(tmp_path):
    with pytest.raises(errors.InvalidRequest, match="neither a dpkg nor an rpm database"):
        detect_family(str(tmp_path))
