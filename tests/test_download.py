"Downloads with gdown faked: resume, hash check, unpacking, and no half-file ever looks complete."
import hashlib, io, json, os, zipfile
from pathlib import Path
import gdown, pytest
from diffseg_edu.datasets import COMPLETE, download, fetch_file, data_cache
from diffseg_edu.data import DataError
from diffseg_edu.cli import data_main as main
from diffseg_edu.frames import write_mosxav_sample, MOSXAVFrames

def zip_with(name: str, text: str) -> bytes:
    "A zip archive holding one member `name`."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z: z.writestr(name, text)
    return buf.getvalue()

def zip_of(root: Path, prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(root.rglob("*")):
            if p.is_file(): z.write(p, Path(prefix) / p.relative_to(root))
    return buf.getvalue()

class FakeDrive:
    "Stands in for gdown.download: serves `payload`, optionally cutting the first transfer after `cut` bytes."
    def __init__(self, payload: bytes, cut: int = None):
        self.payload, self.cut, self.calls = payload, cut, []
    def __call__(self, output, quiet=True, resume=False, id=None, url=None, **kw):
        part = Path(output + "abcdefgh.part")                    # gdown's partial-file naming
        start = part.stat().st_size if resume and part.exists() else 0
        self.calls.append({"id": id, "url": url, "resume": resume, "start": start})
        end = self.cut if (self.cut and len(self.calls) == 1) else len(self.payload)
        with open(part, "ab") as f: f.write(self.payload[start:end])
        if end < len(self.payload): raise ConnectionError("connection reset")
        os.replace(part, output)
        return output

@pytest.fixture
def acdc_zip(synthetic_root):
    return zip_of(synthetic_root, "ACDC")

def test_download_resume_and_unpack(tmp_path, monkeypatch, acdc_zip):
    fake = FakeDrive(acdc_zip, cut=len(acdc_zip) // 3)
    monkeypatch.setattr(gdown, "download", fake)
    sha = hashlib.sha256(acdc_zip).hexdigest()
    with pytest.raises(DataError, match="next call resumes"):
        download("acdc", dest=tmp_path / "acdc", url="1AbCdEfG", sha256=sha)
    assert not (tmp_path / "acdc").exists() and not list(data_cache().rglob("acdc-*[!t]"))   # nothing final yet
    root = download("acdc", dest=tmp_path / "acdc", url="1AbCdEfG", sha256=sha)
    assert fake.calls[0] == {"id": "1AbCdEfG", "url": None, "resume": True, "start": 0}
    assert fake.calls[1]["start"] == len(acdc_zip) // 3                         # resumed, not restarted
    assert (root / COMPLETE).is_file() and (root / "train_slices.list").is_file() and (root / "data" / "slices").is_dir()
    download("acdc", dest=tmp_path / "acdc", url="1AbCdEfG")                    # complete: no new transfer
    assert len(fake.calls) == 2

def test_hash_mismatch_leaves_nothing(tmp_path, monkeypatch, acdc_zip):
    monkeypatch.setattr(gdown, "download", FakeDrive(acdc_zip))
    with pytest.raises(DataError, match="sha256 .* expected 0000.*it was deleted"):
        fetch_file("https://example.org/acdc.zip", tmp_path / "acdc.zip", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []

def test_size_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr(gdown, "download", FakeDrive(b"12345"))
    with pytest.raises(DataError, match="size 5 bytes, expected 6"):
        fetch_file("id", tmp_path / "f", size=6)
    assert not (tmp_path / "f").exists()

def test_wrong_layout_is_not_marked_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(gdown, "download", FakeDrive(zip_with("something/else.txt", "hi")))
    with pytest.raises(DataError, match="no 'train_slices.list' found"):
        download("acdc", dest=tmp_path / "acdc", url="id")
    assert not (tmp_path / "acdc").exists()

def test_zip_slip_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(gdown, "download", FakeDrive(zip_with("../evil.txt", "x")))
    with pytest.raises(DataError, match="outside"):
        download("acdc", dest=tmp_path / "acdc", url="id")
    assert not (tmp_path / "evil.txt").exists()

def test_mosxav_folder_download(tmp_path, monkeypatch):
    tree = write_mosxav_sample(tmp_path / "src" / "MOSXAV_Dataset", size=16)
    payload = zip_of(tree, "MOSXAV_Dataset")
    def fake_folder(id=None, output=None, quiet=True, resume=False, **kw):
        assert id == "1d-kOWF7TkXqkRAfmh0ugkEvT9NmXr3cP" and resume
        Path(output).mkdir(parents=True, exist_ok=True); (Path(output) / "MOSXAV_Dataset.zip").write_bytes(payload)
        return [str(Path(output) / "MOSXAV_Dataset.zip")]
    monkeypatch.setattr(gdown, "download_folder", fake_folder)
    root = download("mosxav", dest=tmp_path / "mosxav")
    assert len(MOSXAVFrames(root, "train")) == 30 and (root / COMPLETE).is_file()

def test_acdc_without_url_explains_sources(tmp_path, capsys):
    with pytest.raises(DataError, match="no official Google Drive mirror"):
        download("acdc", dest=tmp_path / "acdc")
    assert main(["download", "acdc", "--dest", str(tmp_path / "acdc")]) == 2
    assert "SSL4MIS" in capsys.readouterr().err

def test_real_gdown_failure_is_reported(tmp_path, monkeypatch):
    def offline(**kw): raise ConnectionError("Failed to resolve 'drive.google.com'")
    monkeypatch.setattr(gdown, "download", offline)
    with pytest.raises(DataError, match="download failed \\(ConnectionError"):
        fetch_file("someid", tmp_path / "x")
