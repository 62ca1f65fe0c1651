"""Feature file round trip and errors, report contents, ranked-list rendering."""

import json

import cv2
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from reid.evaluation import compute_distance_matrix, evaluate_rank, re_ranking
from reid.evaluation.features_file import FIELDS, FeatureFileError, FeatureSet, load_features, save_features
from reid.evaluation.input_checks import EvaluationInputError
from reid.evaluation.plots import PLACEHOLDER_GREY, plot_ranked_list, select_queries
from reid.evaluation.rank import ranked_gallery
from reid.evaluation.report import (
    EvaluationSettings,
    RerankSettings,
    evaluate_features,
    results_json,
    results_markdown,
    write_report,
)


def clustered_features(seed=0, num_ids=12, per_id=5, dim=16, paths=None):
    """Gallery: per_id images per identity over 3 cameras; one query per identity on camera 0."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim))
    g_pids = np.repeat(np.arange(num_ids), per_id)
    g_camids = np.arange(g_pids.size) % 3
    q_pids = np.arange(num_ids)
    gallery = centres[g_pids] + 0.7 * rng.standard_normal((g_pids.size, dim))
    query = centres[q_pids] + 0.7 * rng.standard_normal((num_ids, dim))
    return FeatureSet.from_arrays(
        query, q_pids, np.zeros(num_ids, dtype=int), gallery, g_pids, g_camids, *paths or ()
    )


def test_feature_file_round_trip(tmp_path):
    features = clustered_features(paths=([f"q{i}.jpg" for i in range(12)], [f"g{i}.jpg" for i in range(60)]))
    save_features(tmp_path / "f.npz", features)
    loaded = load_features(tmp_path / "f.npz")
    for name in FIELDS:
        assert np.array_equal(np.asarray(getattr(loaded, name)), np.asarray(getattr(features, name))), name
    assert loaded.query_features.dtype == np.float32 and loaded.query_paths[3] == "q3.jpg"
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]  # atomic write leaves no temporary behind


def test_feature_file_missing_field_names_file_field_and_contents(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, query_features=np.zeros((2, 3)), query_pids=np.zeros(2, dtype=int))
    with pytest.raises(
        FeatureFileError, match=r"partial\.npz: missing field\(s\) query_camids.*holds \['query_f"
    ):
        load_features(path)


def test_feature_file_unreadable_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_features(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(FeatureFileError, match="text.npz: not a readable"):
        load_features(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(FeatureFileError, match="single array"):
        load_features(tmp_path / "single.npy")


def test_feature_set_rejects_inconsistent_fields(tmp_path):
    with pytest.raises(EvaluationInputError, match="gallery_pids: has 3 entries but 4"):
        FeatureSet.from_arrays(np.zeros((2, 3)), [1, 2], [0, 0], np.zeros((4, 3)), [1, 2, 3], [1, 1, 1, 1])
    with pytest.raises(EvaluationInputError, match="dimension 3 but gallery_features have 5"):
        FeatureSet.from_arrays(np.zeros((2, 3)), [1, 2], [0, 0], np.zeros((4, 5)), [1, 2, 3, 4], [1, 1, 1, 1])


def test_report_numbers_match_direct_evaluation():
    features = clustered_features()
    settings = EvaluationSettings(metric="cosine", max_rank=20, rerank=RerankSettings(k1=6, k2=3))
    outcome = evaluate_features(features, settings, device="cpu")
    labels = (features.query_pids, features.gallery_pids, features.query_camids, features.gallery_camids)
    direct = evaluate_rank(
        compute_distance_matrix(features.query_features, features.gallery_features, "cosine"), *labels
    )
    # With the cosine metric, re-ranking sees unit vectors (squared Euclidean = 2 - 2 cos): same geometry.
    raw = (features.query_features, features.gallery_features)
    unit = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in raw]
    reranked = evaluate_rank(re_ranking(*unit, 6, 3, 0.3), *labels)
    data = results_json(outcome)
    assert data["mAP"] == pytest.approx(direct["mAP"])
    assert data["rank5"] == pytest.approx(direct["cmc"][4])
    assert data["rerank_mAP"] == pytest.approx(reranked["mAP"])
    assert data["rerank_mINP"] == pytest.approx(reranked["mINP"])
    assert len(data["cmc"]) == 20 and data["settings"]["rerank"] == {"k1": 6, "k2": 3, "lambda_value": 0.3}
    table = results_markdown(outcome).splitlines()
    assert table[0].startswith("| Method | Rank-1 | Rank-5 | Rank-10 | mAP | mINP |")
    plain_cells = [cell.strip() for cell in table[2].split("|")[1:-1]]
    assert plain_cells[0] == "plain" and float(plain_cells[4]) == pytest.approx(direct["mAP"] * 100, abs=0.05)
    assert table[3].startswith("| + re-ranking (k1=6, k2=3")


def test_rank10_is_reported_even_with_short_cmc():
    outcome = evaluate_features(clustered_features(), EvaluationSettings(max_rank=3), device="cpu")
    data = results_json(outcome)
    assert len(data["cmc"]) == 3 and 0.0 <= data["rank10"] <= 1.0 and "rerank_mAP" not in data


def test_select_queries_worst_first_skips_invalid():
    ap = np.array([0.5, np.nan, 0.2, 0.9, 0.2])
    assert select_queries(ap, 3, worst_first=True).tolist() == [2, 4, 0]
    assert select_queries(ap, 10, worst_first=False).tolist() == [0, 2, 3, 4]


def test_ranked_gallery_follows_the_protocol():
    distances = np.array([0.1, 0.1, 0.3, 0.2, 0.0])
    g_pids, g_camids = np.array([7, 2, 7, -1, 7]), np.array([1, 1, 1, 1, 0])
    # entry 4 (same pid, same camera) and the junk entry 3 are dropped; the tie 0/1 keeps gallery order
    top = ranked_gallery(distances, 7, 0, g_pids, g_camids, topk=10, junk_pids=[-1])
    assert top.tolist() == [0, 1, 2]


def render(figure):
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def test_ranked_list_shows_real_images_or_placeholders(tmp_path):
    blue = np.zeros((40, 20, 3), dtype=np.uint8)
    blue[..., 0] = 255  # BGR blue
    cv2.imwrite(str(tmp_path / "blue.png"), blue)
    base = clustered_features(num_ids=3, per_id=3)
    with_images = FeatureSet.from_arrays(
        base.query_features,
        base.query_pids,
        base.query_camids,
        base.gallery_features,
        base.gallery_pids,
        base.gallery_camids,
        [str(tmp_path / "blue.png")] * 3,
        [str(tmp_path / "missing.png")] * 9,
    )
    distmat = compute_distance_matrix(base.query_features, base.gallery_features)
    ap = evaluate_rank(distmat, base.query_pids, base.gallery_pids, base.query_camids, base.gallery_camids)[
        "AP"
    ]
    pixels = render(plot_ranked_list(with_images, distmat, [0, 1], ap, topk=4))
    is_blue = (pixels[..., 2] > 240) & (pixels[..., 0] < 15) & (pixels[..., 1] < 15)
    is_grey = np.all(pixels == PLACEHOLDER_GREY, axis=-1)
    assert is_blue.sum() > 500 and is_grey.sum() > 500
    placeholders_only = render(plot_ranked_list(base, distmat, [0, 1], ap, topk=4))
    blue_again = (placeholders_only[..., 2] > 240) & (placeholders_only[..., 0] < 15)
    assert not blue_again.any()


def test_write_report_writes_all_files_and_nothing_else(tmp_path):
    features = clustered_features()
    outcome = evaluate_features(features, EvaluationSettings(max_rank=15), device="cpu")
    paths = write_report(tmp_path / "report", outcome, features, worst_first=True, num_queries=3, topk=5)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        ["results.json", "results.md", "cmc.png", "ranked_list.png"]
    )
    assert json.loads(paths["results.json"].read_text())["mAP"] == pytest.approx(outcome.plain["mAP"])
    for name in ("cmc.png", "ranked_list.png"):
        image = cv2.imread(str(paths[name]))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_a_rerun_killed_mid_report_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    """The report is written into a staging folder that replaces the old one whole: a crash while the
    figures are saved leaves the earlier report byte for byte, and no staging folder survives the next run."""
    import reid.evaluation.report as report

    features = clustered_features()
    outcome = evaluate_features(features, EvaluationSettings(max_rank=15), device="cpu")
    folder = tmp_path / "report"
    write_report(folder, outcome, features, worst_first=False, num_queries=2, topk=3)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    calls = []

    def crash_on_second_figure(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    real_save = report.atomic_save_figure
    monkeypatch.setattr(report, "atomic_save_figure", crash_on_second_figure)
    with pytest.raises(KeyboardInterrupt):
        write_report(folder, outcome, features, worst_first=True, num_queries=3, topk=5)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]

    monkeypatch.setattr(report, "atomic_save_figure", real_save)
    write_report(folder, outcome, features, worst_first=True, num_queries=3, topk=5)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(after) == sorted(before) and after["ranked_list.png"] != before["ranked_list.png"]


def test_a_report_never_replaces_a_folder_holding_other_files(tmp_path):
    features = clustered_features()
    outcome = evaluate_features(features, EvaluationSettings(max_rank=15), device="cpu")
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"weights")
    with pytest.raises(ValueError, match=r"'.*run' holds files this tool did not write \(best\.pt\)"):
        write_report(run, outcome, features)
    assert [p.name for p in run.iterdir()] == ["best.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
