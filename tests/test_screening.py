"""Data preparation once (issue 17, point 4): the bad-image check is cached per data set and reused by later runs and
by the other processes of a run; every change to the images is noticed; one process checks and prints."""

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_vit.data import DataArguments, load_image_classification_data, screening
from tests.test_data import make_image_folder


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def decodes(monkeypatch, tmp_path):
    """Counts the images the check decodes; a fresh, private cache folder per test."""
    monkeypatch.setenv("HF_VIT_CACHE", str(tmp_path / "cache"))
    counter, lock = {"count": 0}, threading.Lock()
    check = screening.check_image

    def spy(value):
        with lock:
            counter["count"] += 1
        return check(value)

    monkeypatch.setattr(screening, "check_image", spy)
    return counter


def _load(root, **options):
    return load_image_classification_data(DataArguments(dataset=str(root), validation_fraction=0.0, test_fraction=0.25,
                                                        **options))


def _check_again(decodes, root, **options):
    decodes["count"] = 0
    data = _load(root, **options)
    return decodes["count"], data


def test_the_check_runs_once_and_is_reused(decodes, tmp_path, capsys):
    root = make_image_folder(tmp_path / "photos", corrupt=("cat3.png",))
    first = _load(root)
    assert decodes["count"] == 16
    out = capsys.readouterr()
    assert "skipping 1 unreadable image(s)" in out.out and "checking the 'train' images" in out.err  # a progress bar
    count, second = _check_again(decodes, root)
    assert count == 0  # reused: nothing decoded
    assert "skipping 1 unreadable image(s)" in capsys.readouterr().out  # the same outcome, reported again
    assert second.skipped_images == first.skipped_images and second.train["label"] == first.train["label"]
    cached = list((tmp_path / "cache" / "screening").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["bad_images"][0][1].endswith("cat3.png")
    with pytest.raises(screening.BadImageError, match="cat3.png"):  # the cached result also serves `fail`
        _load(root, on_bad_image="fail")


@pytest.mark.parametrize("change", ["rewritten", "touched", "added", "removed", "corrupted"])
def test_every_change_to_the_images_is_noticed(decodes, tmp_path, change):
    root = make_image_folder(tmp_path / "photos")
    _load(root)
    target = root / "dog" / "dog4.jpg"
    if change == "rewritten":  # other pixels, other size
        Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(target)
    elif change == "touched":  # same bytes, a new modification time
        stat = target.stat()
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    elif change == "added":
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "dog" / "dog9.png")
    elif change == "removed":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:50])
    count, data = _check_again(decodes, root)
    expected = {"added": 17, "removed": 15}.get(change, 16)
    assert count == expected  # checked again, all of it
    if change == "corrupted":  # and a stale result would have missed this
        assert [where.rsplit("/", 1)[-1] for _, _, where, _ in data.skipped_images] == ["dog4.jpg"]
    assert _check_again(decodes, root)[0] == 0  # the new result is reused in turn


def test_images_stored_in_the_data_set_are_keyed_by_its_fingerprint(decodes, tmp_path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    def write(folder, count):
        rng = np.random.default_rng(count)
        images = []
        for _ in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
        folder.mkdir(exist_ok=True)
        Dataset.from_dict({"image": images, "label": [i % 2 for i in range(count)]}, features=features).to_parquet(
            str(folder / "train.parquet"))

    folder = tmp_path / "hub_like"
    write(folder, 12)
    _load(folder, dataset_format="hub")
    assert decodes["count"] == 12
    assert _check_again(decodes, folder, dataset_format="hub")[0] == 0
    write(folder, 14)  # new contents: datasets' fingerprint changes
    assert _check_again(decodes, folder, dataset_format="hub")[0] == 14


def test_the_cache_folder_and_an_unwritable_one(decodes, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_VIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert screening.cache_dir() == str(tmp_path / "xdg" / "hf_vit")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("HF_VIT_CACHE", str(blocked))
    root = make_image_folder(tmp_path / "photos")
    data = _load(root)  # the run goes on; the check simply runs again next time
    assert len(data.train) + len(data.test) == 16 and "could not write the image check" in capsys.readouterr().out
    assert _check_again(decodes, root)[0] == 16


def test_concurrent_checks_of_one_data_set_decode_it_once(decodes, tmp_path):
    from datasets import load_dataset

    train = load_dataset("imagefolder", data_dir=str(make_image_folder(tmp_path / "photos")))["train"]
    results = []

    def check():
        results.append(len(screening.screen_split("train", train, "skip", [], 1, show=False)))

    threads = [threading.Thread(target=check) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [16, 16, 16] and decodes["count"] == 16  # one checked; the others waited for its result


SCRIPT = """
import json, os, sys
import hf_vit.data.screening as screening
from hf_vit.data import DataArguments, load_image_classification_data

decodes = 0
check = screening.check_image
def spy(value):
    global decodes
    decodes += 1
    return check(value)
screening.check_image = spy
data = load_image_classification_data(DataArguments(dataset=sys.argv[1], validation_fraction=0.0, test_fraction=0.25))
print(json.dumps({"rank": int(os.environ["RANK"]), "decodes": decodes, "rows": len(data.train) + len(data.test)}))
"""


def test_two_processes_check_once_and_one_prints(tmp_path):
    root = make_image_folder(tmp_path / "photos", corrupt=("dog2.jpg",))
    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1",
               PYTHONPATH=str(ROOT / "src"), HF_VIT_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(root)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
                     key=lambda r: r["rank"])
    # Whichever process took the data set's lock first checked every image; the other waited and reused its result.
    assert sorted(r["decodes"] for r in reports) == [0, 16]
    assert [r["rows"] for r in reports] == [15, 15]
    assert done.stdout.count("skipping 1 unreadable image(s)") == 1
    assert "checking the 'train' images" in done.stderr  # the checking process's progress bar
