"""Proposal cache: parallel computation, files keyed by image content and settings, reuse across
splits and data sets, resuming, loading, user-supplied files."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from detkit.data.images import ImageReadError, read_image
from detkit.data.record import DetectionData
from detkit.data.voc import load_voc
from detkit.proposals.cache import (
    ProposalsError,
    cache_folder,
    compute_proposals,
    image_key,
    load_proposals,
    read_proposals_file,
    write_proposals_file,
)
from detkit.proposals.selective_search import selective_search
from tests.data._fixtures import make_voc

OPTS = {"mode": "single", "max_side": 40, "min_size": 4}


@pytest.fixture
def data(tmp_path):
    spec = {f"im{i}": {"objects": [("a", (3, 4, 20, 30))], "image_size": (48 + 8 * i, 40)} for i in range(4)}
    root = make_voc(tmp_path / "voc", spec, {"test": list(spec)})
    return load_voc(root, "test")


class Stop(Exception):
    pass


def test_compute_writes_one_file_per_image(tmp_path, data):
    folder = compute_proposals(data, tmp_path / "cache", workers=2, progress=False, **OPTS)
    assert folder == cache_folder(tmp_path / "cache", **OPTS)
    assert folder.name == "single-40-min4-k150-150-sigma0.8"
    # one file per image, named by the hash of the image file's bytes
    assert sorted(p.stem for p in folder.glob("*.npz")) == sorted(image_key(r.file_name) for r in data.records)
    settings = json.loads((folder / "settings.json").read_text())
    assert settings == {"mode": "single", "max_side": 40, "min_size": 4.0, "base_k": 150, "inc_k": 150, "sigma": 0.8}
    loaded = load_proposals(tmp_path / "cache", data, **OPTS)
    assert sorted(loaded) == [r.image_id for r in data.records]
    for r in data.records:  # the cache holds exactly what a direct search of the image gives
        np.testing.assert_array_equal(loaded[r.image_id], selective_search(read_image(r.file_name), **OPTS))
        assert (loaded[r.image_id][:, 2] <= r.width).all()
    capped = load_proposals(tmp_path / "cache", data, max_proposals=2, **OPTS)
    assert all(len(b) <= 2 for b in capped.values())


def test_image_key_is_the_content(tmp_path, data):
    r = data.records[0]
    copy = tmp_path / "elsewhere" / "copy.jpg"
    copy.parent.mkdir()
    shutil.copyfile(r.file_name, copy)
    assert image_key(copy) == image_key(r.file_name) == hashlib.blake2b(
        Path(r.file_name).read_bytes(), digest_size=16).hexdigest()
    assert image_key(data.records[1].file_name) != image_key(r.file_name)
    with pytest.raises(ImageReadError, match="nope.jpg: cannot read image"):
        image_key(tmp_path / "nope.jpg")


def test_splits_and_data_sets_over_the_same_images_search_once(tmp_path, data):
    searched = []
    compute_proposals(data, tmp_path, progress=False, on_image=lambda i, n, s: searched.append(i), **OPTS)
    assert len(searched) == 4
    # another split name, another data set name, another root (a copy of the files): all cached
    copy = shutil.copytree(Path(data.records[0].file_name).parents[1], tmp_path / "copy")
    moved = [dataclasses.replace(r, file_name=str(copy / Path(r.file_name).parent.name / Path(r.file_name).name))
             for r in reversed(data.records)]
    other = DetectionData(records=moved, class_names=data.class_names, category_ids=data.category_ids,
                          name="another/val")
    compute_proposals(other, tmp_path, workers=2, progress=False, on_image=lambda i, n, s: searched.append(i), **OPTS)
    assert len(searched) == 4
    a, b = load_proposals(tmp_path, data, **OPTS), load_proposals(tmp_path, other, **OPTS)
    for r, m in zip(reversed(data.records), moved):
        np.testing.assert_array_equal(a[r.image_id], b[m.image_id])
    # one image listed twice in a split: searched once
    twice = DetectionData(records=[data.records[0], dataclasses.replace(data.records[0], image_id=99)],
                          class_names=data.class_names, category_ids=data.category_ids, name="twice")
    fresh = []
    compute_proposals(twice, tmp_path / "fresh", progress=False, on_image=lambda i, n, s: fresh.append(i), **OPTS)
    assert fresh == [data.records[0].image_id]
    assert sorted(load_proposals(tmp_path / "fresh", twice, **OPTS)) == [data.records[0].image_id, 99]


def test_settings_key_the_folder(tmp_path, data):
    one = compute_proposals(data, tmp_path, progress=False, **OPTS)
    two = compute_proposals(data, tmp_path, progress=False, **{**OPTS, "base_k": 50, "inc_k": 50})
    assert one != two and two.name == "single-40-min4-k50-50-sigma0.8"
    with pytest.raises(ValueError, match="unknown keys"):
        cache_folder(tmp_path, colour=1)
    with pytest.raises(ValueError, match="base_k >= 1"):
        cache_folder(tmp_path, base_k=0)


def test_interrupted_run_resumes(tmp_path, data):
    seen = []

    def stop_after_two(image_id, n, seconds):
        seen.append(image_id)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        compute_proposals(data, tmp_path, workers=1, progress=False, on_image=stop_after_two, **OPTS)
    folder = cache_folder(tmp_path, **OPTS)
    assert len(list(folder.glob("*.npz"))) == 2
    with pytest.raises(ProposalsError, match="covers 2 of 4 images"):
        load_proposals(tmp_path, data, **OPTS)

    (folder / "0123.npz.tmp").write_bytes(b"half a file")  # a write killed midway
    again = []
    compute_proposals(data, tmp_path, workers=1, progress=False, on_image=lambda i, n, s: again.append(i), **OPTS)
    assert sorted(again) == sorted(set(range(4)) - set(seen))  # only the missing images
    assert not list(folder.glob("*.tmp"))
    assert len(load_proposals(tmp_path, data, **OPTS)) == 4


def test_cache_errors(tmp_path, data):
    with pytest.raises(ProposalsError, match="no proposals cache"):
        load_proposals(tmp_path, data, **OPTS)
    folder = compute_proposals(data, tmp_path, progress=False, **OPTS)
    bad = folder / f"{image_key(data.records[1].file_name)}.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ProposalsError, match=f"{bad.name}: unreadable"):
        load_proposals(tmp_path, data, **OPTS)
    (folder / "settings.json").write_text(json.dumps({"mode": "fast"}))
    with pytest.raises(ProposalsError, match="other settings"):
        compute_proposals(data, tmp_path, progress=False, **OPTS)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_user_file_round_trip(tmp_path, data, suffix):
    rng = np.random.default_rng(0)
    props = {}
    for r in data.records:
        xy = rng.uniform(0, 20, size=(5, 2))
        props[r.image_id] = np.concatenate([xy, xy + rng.uniform(1, 20, size=(5, 2))], 1).astype(np.float32)
    path = write_proposals_file(tmp_path / f"p{suffix}", props, data)
    back = read_proposals_file(path, data)
    assert sorted(back) == sorted(props)
    for i in props:
        np.testing.assert_allclose(back[i], props[i], rtol=0, atol=1e-6)


def test_user_file_errors(tmp_path, data):
    (tmp_path / "a.json").write_text(json.dumps({"im0": [[0, 0, 5, 5]]}))
    with pytest.raises(ProposalsError, match=r"a.json: no proposals for 3 of 4 images \(im1, im2, im3\)"):
        read_proposals_file(tmp_path / "a.json", data)
    bad = {r.name: [[0, 0, 5, 5]] for r in data.records}
    bad["im2"] = [[0, 0, 5]]
    (tmp_path / "b.json").write_text(json.dumps(bad))
    with pytest.raises(ProposalsError, match=r"b.json: image 'im2': boxes must be \(P, 4\)"):
        read_proposals_file(tmp_path / "b.json", data)
    np.savez(tmp_path / "c.npz", im0=np.array([object()], dtype=object))
    with pytest.raises(ProposalsError, match="c.npz: unreadable"):  # no pickle, ever
        read_proposals_file(tmp_path / "c.npz", data)


def test_worker_pool_after_training_imports(tmp_path):
    # Forked workers used to hang once albumentations (imported by the training code) had started
    # its threads; the pool now spawns. Run in a subprocess so a hang is a timeout, not a stuck suite.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import detkit.data.transforms  # starts albumentations' threads, as train_from_config does
        from detkit.data.synthetic import make_synthetic_voc
        from detkit.data.voc import load_voc
        from detkit.proposals.cache import compute_proposals, load_proposals
        if __name__ == "__main__":
            root = make_synthetic_voc({str(tmp_path / 'voc')!r}, num_images=4, image_size=(64, 96), seed=0)
            data = load_voc(root, "trainval")
            compute_proposals(data, {str(tmp_path / 'cache')!r}, workers=2, progress=False)
            print(len(load_proposals({str(tmp_path / 'cache')!r}, data)))
    """)
    path = tmp_path / "run.py"
    path.write_text(script)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == len(load_voc(tmp_path / "voc", "trainval"))
