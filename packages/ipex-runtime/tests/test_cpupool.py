import os

import pytest

from ipex_runtime import CPUPool, get_core_list_of_node_id, topology

ALLOWED = sorted(os.sched_getaffinity(0))


def make_sysfs(root, nodes, online, siblings):
    """A fake /sys/devices/system: nodes {id: "cpulist"}, online "cpulist", siblings {cpu: "cpulist"}."""
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "online").write_text(online + "\n")
    for cpu, sib in siblings.items():
        d = root / "cpu" / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "core_cpus_list").write_text(sib + "\n")
    for node, cpulist in nodes.items():
        d = root / "node" / f"node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpulist + "\n")
    return root


@pytest.fixture
def fake_two_socket(tmp_path):
    # 2 nodes x 4 cores x 2 hyper-threads; cpu c and c+8 share a core; cpu 11 offline.
    siblings = {c: f"{c % 8},{c % 8 + 8}" for c in range(16)}
    return make_sysfs(tmp_path, {0: "0-3,8-11", 1: "4-7,12-15"}, "0-10,12-15", siblings)


@pytest.mark.parametrize("text, cpus", [("0-3,8,10-11\n", [0, 1, 2, 3, 8, 10, 11]), ("5", [5]), ("", [])])
def test_parse_cpu_list(text, cpus):
    assert topology.parse_cpu_list(text) == cpus


def test_node_cores_from_fake_topology(fake_two_socket):
    # One logical CPU per physical core (hyper-thread siblings left out).
    assert get_core_list_of_node_id(0, root=fake_two_socket) == [0, 1, 2, 3]
    assert get_core_list_of_node_id(1, root=fake_two_socket) == [4, 5, 6, 7]
    assert topology.node_ids(fake_two_socket) == [0, 1]


def test_node_cores_skip_offline_and_without_numa_dir(tmp_path):
    root = make_sysfs(tmp_path, {}, "0-2,4-5", {c: str(c) for c in range(6)})
    # No node directory: one node 0 with every online CPU.
    assert get_core_list_of_node_id(0, root=root) == [0, 1, 2, 4, 5]
    with pytest.raises(ValueError, match=r"NUMA node 1 does not exist: this machine has node\(s\) \[0\]"):
        get_core_list_of_node_id(1, root=root)


def test_node_id_errors(fake_two_socket):
    with pytest.raises(ValueError, match=r"node 2 does not exist.*\[0, 1\]"):
        get_core_list_of_node_id(2, root=fake_two_socket)
    with pytest.raises(TypeError, match="node_id must be an int"):
        get_core_list_of_node_id("0")
    with pytest.raises(TypeError, match="node_id must be an int"):
        get_core_list_of_node_id(True)


def test_real_machine_node0():
    cores = get_core_list_of_node_id(0)
    assert cores and set(cores) <= set(topology.online_cpus())


def test_default_pool_is_every_allowed_cpu():
    assert CPUPool().core_ids == ALLOWED
    assert len(CPUPool()) == len(ALLOWED)


def test_core_ids_kept_in_order_any_iterable():
    ids = list(reversed(ALLOWED))
    assert CPUPool(ids).core_ids == ids
    assert CPUPool(core_ids=tuple(ids)).core_ids == ids
    assert CPUPool(range(ALLOWED[0], ALLOWED[0] + 1)).core_ids == [ALLOWED[0]]
    assert CPUPool([ALLOWED[0]]) == CPUPool(core_ids=[ALLOWED[0]])


def test_node_id_pool_and_core_ids_priority():
    assert CPUPool(node_id=0).core_ids == [c for c in get_core_list_of_node_id(0) if c in ALLOWED]
    with pytest.warns(UserWarning, match="node_id ignored"):
        pool = CPUPool(core_ids=[ALLOWED[-1]], node_id=12345)  # node_id is not even looked at
    assert pool.core_ids == [ALLOWED[-1]]


def test_node_without_allowed_cpus(tmp_path, monkeypatch):
    far = max(ALLOWED) + 100
    root = make_sysfs(tmp_path, {0: ",".join(map(str, ALLOWED)), 1: f"{far}-{far + 1}"},
                      f"0-{far + 1}", {c: str(c) for c in [*ALLOWED, far, far + 1]})
    monkeypatch.setattr(topology, "SYSFS_ROOT", root)
    assert CPUPool(node_id=0).core_ids == ALLOWED
    with pytest.raises(ValueError, match=rf"NUMA node 1 has cores \[{far}, {far + 1}\], none of which"):
        CPUPool(node_id=1)


@pytest.mark.parametrize("core_ids, error, match", [
    ([], ValueError, "core_ids is empty"),
    ([ALLOWED[0], ALLOWED[0]], ValueError, rf"lists core\(s\) \[{ALLOWED[0]}\] more than once"),
    ([max(ALLOWED) + 1], ValueError, rf"core id\(s\) \[{max(ALLOWED) + 1}\] are not available.*sched_getaffinity"),
    ([-1], ValueError, "not available"),
    (["0"], TypeError, "int CPU ids only"),
    ([True], TypeError, "int CPU ids only"),
    ([0.0], TypeError, "int CPU ids only"),
    ("01", TypeError, "must be a list of int"),
    (3, TypeError, "must be a list of int"),
])
def test_core_ids_errors(core_ids, error, match):
    with pytest.raises(error, match=match):
        CPUPool(core_ids)


def test_default_pool_leaves_hyper_thread_siblings_out(tmp_path, monkeypatch):
    """CPUPool() took every allowed CPU, both threads of each core: MultiStreamModule("AUTO") then ran two streams
    per physical core, and disagreed with get_core_list_of_node_id."""
    # cpu 0 and 1 share a core here (a fake topology over the CPUs this process has).
    siblings = {c: ",".join(map(str, ALLOWED[:2])) if c in ALLOWED[:2] else str(c) for c in ALLOWED}
    root = make_sysfs(tmp_path, {0: ",".join(map(str, ALLOWED))}, ",".join(map(str, ALLOWED)), siblings)
    monkeypatch.setattr(topology, "SYSFS_ROOT", root)
    if len(ALLOWED) < 2:
        pytest.skip("needs two CPUs available to the process")
    assert CPUPool().core_ids == [ALLOWED[0], *ALLOWED[2:]]
    assert topology.physical_cores(ALLOWED, root=root) == [ALLOWED[0], *ALLOWED[2:]]


def test_physical_cores_keep_a_core_whose_first_thread_is_not_allowed(tmp_path):
    """With only a core's second hardware thread allowed (a cpuset), the core was dropped."""
    root = make_sysfs(tmp_path, {0: "0-3"}, "0-3", {0: "0,2", 2: "0,2", 1: "1,3", 3: "1,3"})
    assert topology.physical_cores([0, 3], root=root) == [0, 3]
    assert topology.physical_cores([0, 1, 2, 3], root=root) == [0, 1]
