"""Region queries: the tile grid, per-tile scores, the region round trip, cost accounting (tiny data, CPU)."""

import json

import numpy as np
import pytest
import tifffile
from cli_run import fails, ok

from activeseg import io, registry, uncertainty
from activeseg.loop import labels_dict, open_session, oracle_correct, pending_regions, pending_slices, query, revert
from activeseg.tiles import TileGrid, parse_region, region_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TILE = 32


@pytest.fixture(scope="module", autouse=True)
def tile_strategies():
    """The tile strategies by name (registered here when the installed entry points predate them)."""
    have = registry.available_strategies()
    if "tile_entropy" not in have:
        from activeseg.strategies import regions

        for name in ("tile_entropy", "tile_random"):
            registry.register_strategy(getattr(regions, name), name)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config):
    d = tmp_path_factory.mktemp("regions")
    ok(["synth", d / "vol", "--shape", 12, 64, 64, "--seed", 1])
    tiny_config(d / "tiny.toml", session={"tile": TILE, "export_margin": 8})
    return d


@pytest.fixture
def session(data, tmp_path):
    s = tmp_path / "s"
    ok(["init", s, "--image", data / "vol" / "image.tif", "--config", data / "tiny.toml"])
    ok(["bootstrap", s, "--slices", "2,9"])
    return s


def _truth(data):
    return io.read_stack(data / "vol" / "truth.tif")


def test_tile_grid_and_region_names():
    g = TileGrid(70, 50, 32)
    assert (g.n_rows, g.n_cols, g.n_tiles) == (3, 2, 6)
    assert g.bounds(5) == (64, 70, 32, 50)  # the corner tile clipped at both edges
    assert g.pixels().tolist() == [1024, 576, 1024, 576, 192, 108] and g.pixels().sum() == 70 * 50
    assert g.tile_of(69, 49) == 5 and g.tile_of(0, 33) == 1
    maps = np.random.default_rng(0).random((2, 70, 50))
    y0, y1, x0, x1 = g.bounds(3)
    assert np.allclose(g.reduce(maps)[:, 3], maps[:, y0:y1, x0:x1].mean(axis=(1, 2)))
    assert np.allclose(g.reduce(maps, "max")[:, 5], maps[:, 64:, 32:].max(axis=(1, 2)))
    assert region_name(120, 17) == "z0120_t017"
    assert parse_region("z0120_t017_mask.tif") == (120, 17) and parse_region("z0120_mask.tif") is None


def test_tile_scores_come_from_the_same_pass():
    class Model:
        n_classes = 2

        def predict_proba(self, image, slices):
            p = np.asarray(image[slices], np.float32) / 255.0
            return np.stack([1 - p, p], axis=1)

    img = (np.random.default_rng(1).random((6, 64, 64)) * 255).astype(np.uint8)
    img[1, :32, :32] = 0  # a tile that is certainly solid: no entropy, no pore, no interface
    g = TileGrid(64, 64, TILE)
    out = uncertainty.score_slices(Model(), img, ["entropy", "tile:entropy", "tile:porosity", "tile:edge"],
                                   slices=[1, 3], tiles=g)
    assert out["tile:entropy"].shape == (6, 4) and np.isnan(out["tile:entropy"][0]).all()
    assert np.isclose(out["tile:entropy"][3].mean(), out["entropy"][3])  # equal tiles: the mean of the tile means
    assert out["tile:entropy"][1, 0] == pytest.approx(0.0, abs=1e-6) and out["tile:porosity"][1, 0] == 0
    assert out["tile:edge"][1, 0] < out["tile:edge"][1, 3]
    with pytest.raises(ValueError, match="tiles="):
        uncertainty.score_slices(Model(), img, ["tile:entropy"], slices=[1])


def test_region_round_trip_query_export_import_train(data, session, tmp_path):
    out = ok(["query", session, "-n", 3, "--strategy", "tile_entropy", "--audit"])
    assert "regions" in out and "zNNNN_tTTT_mask.tif" in out
    m = json.loads((session / "activeseg.json").read_text())
    rnd = m["rounds"][-1]
    assert rnd["unit"] == "tiles" and rnd["tile"] == TILE and rnd["queried"] == []
    regions = [tuple(r) for r in rnd["regions"]]
    audit = [tuple(r) for r in rnd["audit_regions"]]
    assert regions == sorted(set(regions)) and set(audit) <= set(regions)
    assert len(audit) == len({z for z, _ in audit}) >= 1  # each audit tile from its own slice
    folder = session / "rounds" / "r001"
    g = TileGrid(64, 64, TILE)
    for z, t in regions:
        stem = region_name(z, t)
        mask = tifffile.imread(folder / f"{stem}_mask.tif")
        image = tifffile.imread(folder / f"{stem}_image.tif")
        assert mask.shape == (TILE, TILE) and 255 not in mask
        assert image.shape[0] == 3 and image.shape[1] > TILE and image.shape[2] > TILE  # context: planes and margin
        assert tifffile.imread(folder / f"{stem}_uncertainty.tif").shape == (TILE, TILE)
        assert (folder / f"{stem}_preview.png").exists()
    assert "next:" in ok(["status", session]) and not list(folder.glob("z????_mask.tif"))
    # refused: a pixel left unlabelled, a mask of the wrong size; nothing is committed
    before = (session / "activeseg.json").read_bytes()
    z0, t0 = regions[0]
    good = tifffile.imread(folder / f"{region_name(z0, t0)}_mask.tif")
    holey = good.copy()
    holey[0, 0], holey[1, 1] = 255, 1 - min(int(holey[1, 1]), 1)
    io.write_stack(folder / f"{region_name(z0, t0)}_mask.tif", holey[None], kind="labels")
    assert "255" in fails(["import", session])
    io.write_stack(folder / f"{region_name(z0, t0)}_mask.tif", np.zeros((1, TILE, TILE + 8), np.uint8), kind="labels")
    assert "tile is" in fails(["import", session])
    assert (session / "activeseg.json").read_bytes() == before
    # the person corrects every tile to the truth
    truth = _truth(data)
    flipped = 0
    for z, t in regions:
        y0, y1, x0, x1 = g.bounds(t)
        p = folder / f"{region_name(z, t)}_mask.tif"
        exported = good if (z, t) == (z0, t0) else tifffile.imread(p)  # the pre-fill (the first was overwritten above)
        flipped += int(np.count_nonzero(exported != truth[z, y0:y1, x0:x1]))
        io.write_stack(p, truth[z, y0:y1, x0:x1][None], kind="labels")
    out = ok(["import", session])
    assert f"{len(regions)} regions imported" in out
    sess = open_session(session)
    labels = labels_dict(sess)
    for z in {z for z, _ in regions}:
        inside = np.zeros((64, 64), bool)
        for t in [t for zz, t in regions if zz == z]:
            y0, y1, x0, x1 = g.bounds(t)
            inside[y0:y1, x0:x1] = True
        assert np.array_equal(labels[z][inside], truth[z][inside]) and (labels[z][~inside] == 255).all()
    assert sorted(sess.manifest["rounds"][-1]["imported_regions"]) == sorted(list(r) for r in regions)
    st = json.loads(ok(["status", session, "--json"]))
    row = st["rounds"][-1]
    assert row["unit"] == "tiles" and row["reviewed_px"] == len(regions) * TILE * TILE and row["changed_px"] == flipped
    assert st["cost_total"] == {"reviewed_px": row["reviewed_px"], "changed_px": flipped}
    cost = sess.manifest["rounds"][-1]["cost"]
    assert cost["audit"]["units"] == len(audit) and len(cost["audit_units"]) == len(audit)
    assert np.sum(cost["audit"]["confusion"]) == len(audit) * TILE * TILE
    out = ok(["train", session, "--steps", 2])
    assert "labels on" in out
    ok(["export", session, tmp_path / "seg.tif"])
    assert io.read_stack(tmp_path / "seg.tif").shape == (12, 64, 64)
    # the next query leaves the corrected tiles alone
    rnd2 = query(open_session(session), 4, strategy="tile_random", export=False)
    assert not {tuple(r) for r in rnd2["regions"]} & set(regions)
    # revert a slice: its region labels go
    zr = next(z for z, _ in regions if z not in (2, 9))
    ok(["revert", session, "--slice", zr])
    assert zr not in labels_dict(open_session(session))


def test_oracle_effort_per_region_and_perfect_audits(data, session):
    sess = open_session(session)
    rnd = query(sess, 4, strategy="tile_random", audit=True, export=False)
    regions = [tuple(r) for r in rnd["regions"]]
    audit = {tuple(r) for r in rnd["audit_regions"]}
    assert audit and set(regions) - audit
    res = oracle_correct(sess, effort=5)
    g, truth = TileGrid(64, 64, TILE), _truth(data)
    labels = labels_dict(sess)
    for z, t in regions:
        y0, y1, x0, x1 = g.bounds(t)
        changed = res["region_cost"][region_name(z, t)]
        if (z, t) in audit:
            assert np.array_equal(labels[z][y0:y1, x0:x1], truth[z, y0:y1, x0:x1])  # audits: the perfect oracle
        else:
            assert changed <= 5
    cost = sess.manifest["rounds"][-1]["cost"]
    assert cost["reviewed_px"] == len(regions) * TILE * TILE and cost["units"] == len(regions)
    assert sess.manifest["rounds"][-1]["status"] == "labelled"


def test_run_with_a_tile_strategy(session):
    out = ok(["run", session, "--strategy", "tile_entropy", "-n", 2, "--rounds", 2])
    assert out.count("solid IoU") == 2
    st = json.loads(ok(["status", session, "--json"]))
    assert [r["unit"] for r in st["rounds"][1:]] == ["tiles", "tiles"]
    assert all(r["reviewed_px"] == len(r["regions"]) * TILE * TILE for r in st["rounds"][1:])


def test_an_old_session_without_cost_still_shows_costs(data, session):
    sess = open_session(session)
    query(sess, 2, strategy="distributed", audit=True, export=False)
    oracle_correct(sess, effort=3)
    path = session / "activeseg.json"
    m = json.loads(path.read_text())
    rnd = m["rounds"][-1]
    assert rnd["cost"]["reviewed_px"] == 3 * 64 * 64 and rnd["cost"]["audit"]["units"] == 1
    unit = rnd["cost"]["audit_units"][0]  # a whole-slice audit keeps the confusion of each tile as well
    assert unit["t"] is None and len(unit["tiles"]) == 4
    assert np.array_equal(np.sum(unit["tiles"], axis=0), unit["confusion"])
    assert np.array_equal(labels_dict(sess)[rnd["audit"]], _truth(data)[rnd["audit"]])  # perfect, whatever the effort
    del rnd["cost"]  # as a round recorded before the cost existed
    for key in ("tile", "export_margin", "audit_tiles", "stop_gain"):
        m["config"].pop(key, None)
    path.write_text(json.dumps(m))
    st = json.loads(ok(["status", session, "--json"]))
    row = st["rounds"][-1]
    assert row["unit"] == "slices" and row["reviewed_px"] == 3 * 64 * 64
    assert row["changed_px"] == sum(rnd["correction_cost"].values())
    assert "reviewed" in ok(["status", session])


def test_revert_of_an_open_round_frees_its_regions_and_slices(session):
    """``revert --round`` closes the waiting units: they are not pending, not carried into the
    next round, and free to be queried again (not treated as skipped by the person)."""
    sess = open_session(session)
    rnd = query(sess, 3, strategy="tile_random", export=False)
    waiting = sorted(tuple(r) for r in rnd["regions"])
    revert(sess, round_index=rnd["index"])
    closed = sess.manifest["rounds"][-1]
    assert pending_regions(closed) == [] and not closed.get("skipped_regions")
    again = query(sess, 10_000, strategy="tile_random", export=False)
    picked = {tuple(r) for r in again["regions"]}
    assert set(waiting) <= picked  # every reverted region may be asked again
    assert not again.get("carried")
    # slices alike: a reverted open round of slices is not carried over
    revert(sess, round_index=again["index"])
    srnd = query(sess, 2, strategy="distributed", export=False)
    revert(sess, round_index=srnd["index"])
    assert pending_slices(sess.manifest["rounds"][-1]) == []
    nxt = query(sess, 2, strategy="distributed", export=False)
    assert not nxt.get("carried")
