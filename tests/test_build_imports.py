"""The build package imports one way: no module of sid_edge.build reaches itself again through its imports
(grimp's import graph, function-level imports included), and the head kinds are one registry."""

import pytest

grimp = pytest.importorskip("grimp")


def build_cycles(graph) -> list[tuple[str, ...]]:
    """Every import a -> b inside sid_edge.build for which b leads back to a, as the cycle a -> b -> ... -> a."""
    modules = sorted(m for m in graph.modules if m == "sid_edge.build" or m.startswith("sid_edge.build."))
    cycles = []
    for a in modules:
        for b in sorted(graph.find_modules_directly_imported_by(a)):
            if b.startswith("sid_edge.build") and (back := graph.find_shortest_chain(importer=b, imported=a)):
                cycles.append((a, *back))
    return cycles


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("sid_edge", cache_dir=None)


def test_build_package_has_no_import_cycle(graph):
    assert "sid_edge.build.training" in graph.modules and "sid_edge.build.heads" in graph.modules
    assert build_cycles(graph) == []
    # The layering inside build: modules -> registry -> (one loop | one loader).
    assert graph.direct_import_exists(importer="sid_edge.build.training", imported="sid_edge.build.head_kinds")
    assert graph.direct_import_exists(importer="sid_edge.build.heads", imported="sid_edge.build.head_kinds")
    assert not graph.chain_exists(importer="sid_edge.build.heads", imported="sid_edge.build.training")
    for low in ("sid_edge.build.concept_model", "sid_edge.build.linear_heads", "sid_edge.build.head_kinds"):
        assert not graph.chain_exists(importer=low, imported="sid_edge.build.heads")
        assert not graph.chain_exists(importer=low, imported="sid_edge.build.training")


def test_the_cycle_check_finds_a_cycle():
    # The old cycle (concept_model -> training -> ... -> concept_model) put back into a fresh graph.
    g = grimp.build_graph("sid_edge", cache_dir=None)
    g.add_import(importer="sid_edge.build.concept_model", imported="sid_edge.build.training")
    found = build_cycles(g)
    assert ("sid_edge.build.concept_model", "sid_edge.build.training", "sid_edge.build.head_kinds",
            "sid_edge.build.concept_model") in found


def test_cli_head_kinds_are_the_registry():
    from sid_edge.build.head_kinds import HEAD_KINDS
    from sid_edge.cli.train import HEAD_KIND_CHOICES

    assert HEAD_KIND_CHOICES == tuple(HEAD_KINDS) == ("orthogonal", "linear", "concepts")
