import os
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from skad.datasets import load_elpv, load_folder, load_mvtec, load_visa, make_defect_images


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(value, size=(8, 10), rgb=True):
    shape = (*size, 3) if rgb else size
    return np.full(shape, value, dtype=np.uint8)


def _mask(size=(8, 10), box=(slice(2, 4), slice(3, 6)), on=255):
    mask = np.zeros(size, dtype=np.uint8)
    mask[box] = on
    return mask


@pytest.fixture
def mvtec_root(tmp_path):
    root = tmp_path / "mvtec"
    cat = root / "bottle"
    for i in range(3):
        _save(cat / "train" / "good" / f"{i:03d}.png", _image(10 + i))
    _save(cat / "test" / "good" / "000.png", _image(50))
    _save(cat / "test" / "good" / "001.png", _image(51))
    for i in range(2):
        _save(cat / "test" / "crack" / f"{i:03d}.png", _image(100 + i))
        _save(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png", _mask())
    _save(cat / "test" / "broken_large" / "000.png", _image(200))
    _save(cat / "ground_truth" / "broken_large" / "000_mask.png", _mask(box=(0, 0)))
    (root / "cable").mkdir()
    return root


def test_load_mvtec_lazy_paths(mvtec_root):
    data = load_mvtec(mvtec_root, "bottle")
    assert isinstance(data.images, list) and all(isinstance(p, str) for p in data.images)
    # good first, then defect folders alphabetically, files sorted by name
    assert data.defect_type.tolist() == ["good", "good", "broken_large", "crack", "crack"]
    assert data.target.tolist() == [1, 1, -1, -1, -1]
    assert [os.path.basename(p) for p in data.images] == ["000.png", "001.png"] + [
        "000.png"
    ] * 2 + ["001.png"]
    assert data.masks[:2] == [None, None]
    assert data.masks[3].endswith(os.path.join("ground_truth", "crack", "000_mask.png"))
    assert data.filenames.tolist() == data.images
    assert "MVTec" in data.DESCR


def test_load_mvtec_train_split(mvtec_root):
    data = load_mvtec(mvtec_root, "bottle", split="train")
    assert len(data.images) == 3
    assert (data.target == 1).all() and (data.defect_type == "good").all()


def test_load_mvtec_arrays(mvtec_root):
    data = load_mvtec(mvtec_root, "bottle", return_arrays=True)
    assert data.images.shape == (5, 8, 10, 3) and data.images.dtype == np.uint8
    assert data.images[0, 0, 0, 0] == 50 and data.images[4, 0, 0, 0] == 101
    assert data.masks.shape == (5, 8, 10) and data.masks.dtype == bool
    assert not data.masks[:2].any()
    assert data.masks[3].sum() == 6 and data.masks[3, 2:4, 3:6].all()
    assert data.masks[2].sum() == 1


def test_load_mvtec_resize(mvtec_root):
    data = load_mvtec(mvtec_root, "bottle", return_arrays=True, image_size=(4, 5))
    assert data.images.shape == (5, 4, 5, 3)
    assert data.masks.shape == (5, 4, 5)
    assert data.masks[3].any() and not data.masks[0].any()
    data = load_mvtec(mvtec_root, "bottle", return_arrays=True, image_size=16)
    assert data.images.shape == (5, 16, 16, 3)


def test_load_mvtec_errors(mvtec_root, tmp_path):
    with pytest.raises(ValueError, match=r"available categories: \['bottle', 'cable'\]"):
        load_mvtec(mvtec_root, "zipper")
    with pytest.raises(ValueError, match="root"):
        load_mvtec(tmp_path / "nowhere", "bottle")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_mvtec(mvtec_root, "bottle", split="val")
    with pytest.raises(ValueError, match="split"):
        load_mvtec(mvtec_root, "cable")
    with pytest.raises(ValueError, match="return_arrays=True"):
        load_mvtec(mvtec_root, "bottle", image_size=32)
    with pytest.raises(ValueError, match="image_size"):
        load_mvtec(mvtec_root, "bottle", return_arrays=True, image_size=(0, 3))
    (mvtec_root / "bottle" / "test" / "hole").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        load_mvtec(mvtec_root, "bottle")


def test_load_mvtec_different_sizes_need_image_size(mvtec_root):
    _save(mvtec_root / "bottle" / "test" / "crack" / "002.png", _image(3, size=(12, 12)))
    with pytest.raises(ValueError, match="pass image_size"):
        load_mvtec(mvtec_root, "bottle", return_arrays=True)
    with pytest.warns(UserWarning, match="no mask file"):
        data = load_mvtec(mvtec_root, "bottle", return_arrays=True, image_size=8)
    assert data.images.shape == (6, 8, 8, 3)
    assert not data.masks[5].any()


@pytest.fixture
def visa_root(tmp_path):
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            image = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _save(root / image, _image(20 + i, size=(6, 6)))
            rows.append(f"{obj},{'train' if i < 2 else 'test'},normal,{image},")
        for i in range(2):
            image = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mask = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            _save(root / image, _image(150, size=(6, 6)))
            _save(root / mask, _mask(size=(6, 6), box=(slice(0, 2), slice(0, 2)), on=1))
            rows.append(f"{obj},test,anomaly,{image},{mask}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_load_visa(visa_root):
    data = load_visa(visa_root, "candle", split="test")
    assert data.target.tolist() == [1, -1, -1]
    assert data.defect_type.tolist() == ["good", "anomaly", "anomaly"]
    assert data.masks[0] is None and data.masks[1].endswith("000.png")
    assert all("candle" in p for p in data.images)

    train = load_visa(visa_root, "pcb1", split="train")
    assert len(train.images) == 2 and (train.target == 1).all()

    arrays = load_visa(visa_root, "candle", return_arrays=True)
    assert arrays.images.shape == (3, 6, 6, 3)
    # VisA masks store 0/1: any non-zero pixel is anomalous
    assert arrays.masks[1].sum() == 4 and not arrays.masks[0].any()


def test_load_visa_errors(visa_root, tmp_path):
    with pytest.raises(ValueError, match=r"available categories: \['candle', 'pcb1'\]"):
        load_visa(visa_root, "capsules")
    with pytest.raises(ValueError, match="split_csv/1cls.csv"):
        load_visa(tmp_path, "candle")
    with pytest.raises(ValueError, match="split must be"):
        load_visa(visa_root, "candle", split="all")


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "parts"
    _save(root / "ok" / "b.png", _image(1, rgb=False))
    _save(root / "ok" / "a.JPG", _image(2, rgb=False))
    (root / "ok" / "notes.txt").write_text("not an image")
    _save(root / "scratch" / "s1.bmp", _image(3, rgb=False))
    _save(root / "crack" / "c1.tif", _image(4, rgb=False))
    _save(root / "crack" / "c2.png", _image(5, rgb=False))
    _save(root / "masks" / "crack" / "c1_mask.png", _mask())
    _save(root / "masks" / "crack" / "c2.png", _mask(box=(slice(0, 1), slice(0, 1))))
    (root / ".cache").mkdir()
    return root


def test_load_folder(folder_root):
    data = load_folder(folder_root, normal="ok", mask_dir="masks")
    names = [os.path.basename(p) for p in data.images]
    assert names == ["a.JPG", "b.png", "c1.tif", "c2.png", "s1.bmp"]
    assert data.defect_type.tolist() == ["good", "good", "crack", "crack", "scratch"]
    assert data.target.tolist() == [1, 1, -1, -1, -1]
    assert data.masks[0] is None and data.masks[4] is None
    assert data.masks[2].endswith("c1_mask.png") and data.masks[3].endswith("c2.png")

    with pytest.warns(UserWarning, match="no mask file"):
        arrays = load_folder(folder_root, normal="ok", mask_dir="masks", return_arrays=True)
    assert arrays.images.shape == (5, 8, 10) and arrays.images.dtype == np.uint8
    assert arrays.images[:, 0, 0].tolist() == [2, 1, 4, 5, 3]
    assert arrays.masks.shape == (5, 8, 10)
    assert arrays.masks.sum(axis=(1, 2)).tolist() == [0, 0, 6, 1, 0]


def test_load_folder_without_masks(folder_root):
    # Without mask_dir, 'masks' is read as a defect folder; it holds no images itself.
    with pytest.raises(ValueError, match="masks.*contains no images"):
        load_folder(folder_root, normal="ok")
    shutil.rmtree(folder_root / "masks")
    data = load_folder(folder_root, normal="ok")
    assert set(data.defect_type) == {"good", "crack", "scratch"}
    assert all(m is None for m in data.masks)


def test_load_folder_errors(folder_root, tmp_path):
    with pytest.raises(ValueError, match=r"No folder of normal images 'good'.*normal="):
        load_folder(folder_root)
    with pytest.raises(ValueError, match="mask_dir"):
        load_folder(folder_root, normal="ok", mask_dir="nope")
    with pytest.raises(ValueError, match="root"):
        load_folder(tmp_path / "missing")
    (folder_root / "dent").mkdir()
    with pytest.raises(ValueError, match="dent.*contains no images"):
        load_folder(folder_root, normal="ok", mask_dir="masks")


def test_make_defect_images_shapes_and_determinism():
    data = make_defect_images(40, image_size=32, anomaly_ratio=0.25, random_state=0)
    assert data.images.shape == (40, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.masks.shape == (40, 32, 32) and data.masks.dtype == bool
    assert (data.target == -1).sum() == 10 and set(np.unique(data.target)) == {-1, 1}
    assert not data.masks[data.target == 1].any()
    assert data.masks[data.target == -1].any(axis=(1, 2)).all()

    again = make_defect_images(40, image_size=32, anomaly_ratio=0.25, random_state=0)
    for key in ("images", "target", "masks"):
        np.testing.assert_array_equal(data[key], again[key])
    other = make_defect_images(40, image_size=32, anomaly_ratio=0.25, random_state=1)
    assert not np.array_equal(data.images, other.images)

    gray = make_defect_images(5, image_size=16, n_channels=1, shuffle=False, random_state=0)
    assert gray.images.shape == (5, 16, 16)
    assert gray.target.tolist() == [1, 1, -1, -1, -1]


def test_make_defect_images_difficulty():
    data = make_defect_images(200, image_size=48, random_state=0)
    images = data.images.astype(float).mean(axis=-1)
    is_anomaly = data.target == -1
    # Global statistics do not separate the classes perfectly ...
    for stat in (images.mean(axis=(1, 2)), images.std(axis=(1, 2))):
        auc = roc_auc_score(is_anomaly, stat)
        assert max(auc, 1 - auc) < 0.9
    # ... but the defects are clearly visible against the rest of their image.
    gaps = [
        abs(image[mask].mean() - image[~mask].mean())
        for image, mask in zip(images[is_anomaly], data.masks[is_anomaly])
    ]
    assert np.median(gaps) > 20


def test_make_defect_images_errors():
    with pytest.raises(ValueError, match="n_samples"):
        make_defect_images(0)
    with pytest.raises(ValueError, match="anomaly_ratio"):
        make_defect_images(10, anomaly_ratio=1.5)
    with pytest.raises(ValueError, match="n_channels"):
        make_defect_images(10, n_channels=2)
    with pytest.raises(ValueError, match="image_size"):
        make_defect_images(10, image_size=4)
    with pytest.raises(ValueError, match="defect_size"):
        make_defect_images(10, defect_size=(0.5, 0.1))


def test_load_elpv_paths():
    elpv = load_elpv(return_arrays=False)
    assert len(elpv.images) == 2624 and isinstance(elpv.images[0], str)
    assert elpv.images == elpv.filenames.tolist()
    p = elpv.probability
    assert int((p == 0).sum()) == 1508 and int((p == 1).sum()) == 715
    assert int(np.isclose(p, 1 / 3).sum()) == 295 and int(np.isclose(p, 2 / 3).sum()) == 106
    mono = elpv.cell_type == "mono"
    assert set(elpv.cell_type) == {"mono", "poly"}
    assert int((mono & (p == 0)).sum()) == 588 and int((~mono & (p == 0)).sum()) == 920
    assert int((mono & (p == 1)).sum()) == 313 and int((~mono & (p == 1)).sum()) == 402
    np.testing.assert_array_equal(elpv.target, np.where(p == 0, 1, -1))
    # CSV order is kept: cell0001 is a defective mono cell
    assert os.path.basename(elpv.filenames[0]) == "cell0001.png"
    assert p[0] == 1.0 and elpv.cell_type[0] == "mono" and p[3] == 0.0
    assert all(os.path.isfile(f) for f in elpv.filenames[::100])
    assert "ELPV" in elpv.DESCR


@pytest.mark.slow  # decodes 2,624 PNG files: about 5 s on an idle core
def test_load_elpv_arrays():
    elpv = load_elpv()
    assert elpv.images.shape == (2624, 300, 300) and elpv.images.dtype == np.uint8
    for i in (0, 1234, 2623):
        with Image.open(elpv.filenames[i]) as image:
            np.testing.assert_array_equal(elpv.images[i], np.asarray(image))
    assert int((elpv.target == 1).sum()) == 1508
