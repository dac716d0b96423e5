"""Paths the command line cannot write or read: every command answers with one line on stderr that names the path
as the user gave it, exit status 2 and no traceback, before it does anything slow (loading MNIST, training,
sampling).

Tests run as root in CI, where chmod denies nothing: "permission denied" uses /sys (no one may create files there),
"read-only" uses a read-only bind mount in a private mount namespace (unshare -m) when run as root, and a chmod-ed
folder otherwise."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gencore.cli import main

GAN = ["--data", "digits", "--limit", "32", "--batch-size", "16", "--features", "8", "--steps", "1", "--no-progress"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def one_line_error(capsys, argv, *expected) -> str:
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for text in expected:
        assert str(text) in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A one-step GAN run folder."""
    out = tmp_path_factory.mktemp("checkpoint") / "run"
    assert main(["train", "gan", *GAN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Ten 28x28 uint8 images as .npy: enough for `gencore eval --fake X --real X`."""
    path = tmp_path_factory.mktemp("images") / "images.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8))
    return path


# Every command that writes: its argv with the output path last but one (flag, path).
def writers(checkpoint, images):
    return {
        "sample png": (["sample", "--checkpoint", checkpoint, "--n", "2", "--out"], "x.png"),
        "sample safetensors": (["sample", "--checkpoint", checkpoint, "--n", "2", "--out"], "x.safetensors"),
        "train": (["train", "gan", *GAN, "--out"], "run"),
        "demo": (["demo", "--quick", "--no-progress", "--out"], "demo"),
        "eval json": (["eval", "--fake", images, "--real", images, "--k", "2", "--json"], "m.json"),
    }


WRITERS = ["sample png", "sample safetensors", "train", "demo", "eval json"]


@pytest.mark.parametrize("command", WRITERS)
def test_output_where_no_file_may_be_created(capsys, checkpoint, images, command):
    """/sys refuses new files even to root (permission denied); /proc has no room for them either."""
    argv, name = writers(checkpoint, images)[command]
    flag = argv[-1]
    for parent in ("/sys", "/sys/gencore-missing", "/proc"):
        path = f"{parent}/{name}"
        one_line_error(capsys, [*argv, path], f"{flag} {path}", "cannot create files in")


@pytest.mark.parametrize("command", WRITERS)
def test_output_under_a_file(capsys, tmp_path, checkpoint, images, command):
    argv, name = writers(checkpoint, images)[command]
    (tmp_path / "file").write_text("not a folder")
    path = tmp_path / "file" / name
    one_line_error(capsys, [*argv, path], f"{argv[-1]} {path}", "is a file, not a folder")


@pytest.mark.parametrize("command", ["train", "demo"])
def test_output_folder_that_is_a_file(capsys, tmp_path, checkpoint, images, command):
    argv, _ = writers(checkpoint, images)[command]
    path = tmp_path / "file"
    path.write_text("not a folder")
    one_line_error(capsys, [*argv, path], f"--out {path}: is a file, not a folder")


@pytest.mark.parametrize("command", ["sample png", "sample safetensors", "eval json"])
def test_output_file_that_is_a_folder(capsys, tmp_path, checkpoint, images, command):
    argv, name = writers(checkpoint, images)[command]
    path = tmp_path / name
    path.mkdir()
    one_line_error(capsys, [*argv, path], f"{argv[-1]} {path}: is a folder, not a file name")


@pytest.mark.parametrize("command", ["sample png", "sample safetensors", "train", "eval json"])
def test_output_with_missing_parents_is_created(capsys, tmp_path, checkpoint, images, command):
    """A missing parent is not an error: the folders are made (`gencore demo` is covered in test_cli.py)."""
    argv, name = writers(checkpoint, images)[command]
    path = tmp_path / "a" / "b" / name
    code = main([str(a) for a in [*argv, path]])
    assert code == 0, capsys.readouterr().err
    assert path.exists()
    assert not [p for p in (tmp_path / "a" / "b").rglob(".gencore-probe-*")]  # the probe leaves nothing


def _read_only_runs(folder, argvs) -> list[tuple[int, str]]:
    """(exit status, stderr) of each argv with `folder` read-only: chmod for a normal user; for root, whom chmod
    does not stop, a read-only bind mount in a private mount namespace, in one subprocess."""
    if not IS_ROOT:
        os.chmod(folder, 0o555)
        try:
            results = []
            for argv in argvs:
                proc = subprocess.run([sys.executable, "-m", "gencore.cli", *argv], capture_output=True, text=True,
                                      timeout=120)
                results.append((proc.returncode, proc.stderr))
            return results
        finally:
            os.chmod(folder, 0o755)
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without `unshare -m` (a private mount namespace): no way to make a folder "
                    "read-only for root here")
    script = textwrap.dedent("""
        import contextlib, io, json, sys
        from gencore.cli import main
        results = []
        for argv in json.loads(sys.argv[1]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(argv)
            results.append((code, err.getvalue()))
        print(json.dumps(results))
    """)
    proc = subprocess.run([unshare, "-m", "sh", "-c", 'mount --bind -o ro "$1" "$1" && exec "$2" -c "$3" "$4"', "sh",
                           str(folder), sys.executable, script, json.dumps(argvs)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and proc.stderr.startswith("mount:"):
        pytest.skip(f"a read-only bind mount is refused here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


def test_output_in_a_read_only_folder(tmp_path, checkpoint, images):
    folder = tmp_path / "read-only"
    folder.mkdir()
    cases = [(argv, name) for argv, name in writers(checkpoint, images).values()]
    argvs = [[str(a) for a in argv] + [str(folder / name)] for argv, name in cases]
    argvs.append(["train", "gan", *GAN, "--out", str(folder)])  # the read-only folder itself as the run folder
    for argv, (code, err) in zip(argvs, _read_only_runs(folder, argvs)):
        assert code == 2, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"{argv[-2]} {argv[-1]}" in err and "cannot create files in" in err, err
        assert "Read-only file system" in err or "Permission denied" in err, err
    assert os.listdir(folder) == []


# -- unreadable inputs ------------------------------------------------------------------------------------------------

def test_sample_unreadable_checkpoints(capsys, tmp_path, checkpoint):
    png = tmp_path / "x.png"
    one_line_error(capsys, ["sample", "--checkpoint", tmp_path / "missing", "--out", png],
                   "checkpoint not found", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["sample", "--checkpoint", tmp_path / "empty", "--out", png],
                   tmp_path / "empty", "holds no checkpoint")
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(capsys, ["sample", "--checkpoint", tmp_path / "notes.txt", "--out", png],
                   tmp_path / "notes.txt", "is a file; a checkpoint is a folder")
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    weights = next(broken.glob("checkpoint-*")) / "generator.safetensors"
    weights.write_bytes(b"this is not a safetensors file")
    one_line_error(capsys, ["sample", "--checkpoint", broken, "--out", png], weights, "corrupt")
    assert not png.exists()


def test_eval_unreadable_inputs_before_mnist(capsys, tmp_path, images):
    """Every mistake in eval's own arguments is reported before the missing MNIST it would load next."""
    no_mnist = ["--mnist-dir", tmp_path / "no-mnist"]
    one_line_error(capsys, ["eval", "--fake", tmp_path / "missing.npy", *no_mnist], "no such file", "missing.npy")
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(capsys, ["eval", "--fake", tmp_path / "notes.txt", *no_mnist], "notes.txt", "unknown format")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["eval", "--fake", tmp_path / "empty", *no_mnist], "empty", "no image files")
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    one_line_error(capsys, ["eval", "--fake", tmp_path / "bad.safetensors", *no_mnist], "bad.safetensors",
                   "cannot be read")
    one_line_error(capsys, ["eval", "--checkpoint", tmp_path / "missing", *no_mnist], "checkpoint not found")
    one_line_error(capsys, ["eval", "--checkpoint", tmp_path / "empty", *no_mnist], "holds no checkpoint")
    one_line_error(capsys, ["eval", "--fake", images, "--json", "/sys/m.json", *no_mnist], "--json /sys/m.json")
    one_line_error(capsys, ["eval", "--fake", images, "--k", "10", *no_mnist], "k=10", "generated images")
    # with every argument right, the missing MNIST is what is reported
    one_line_error(capsys, ["eval", "--fake", images, *no_mnist], "--mnist-dir")


def test_train_unreadable_inputs(capsys, tmp_path, checkpoint):
    out = tmp_path / "run"
    one_line_error(capsys, ["train", "gan", "--data", tmp_path / "missing", "--out", out], "missing",
                   "no such folder")
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(capsys, ["train", "gan", "--data", tmp_path / "notes.txt", "--out", out], "notes.txt", "is a file")
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "latest.json").write_text("{not json")
    one_line_error(capsys, ["train", "gan", *GAN, "--out", broken, "--resume"], broken / "latest.json", "corrupt")
    # an unwritable --out is reported before the missing MNIST the run would load
    one_line_error(capsys, ["train", "gan", "--data", "mnist", "--mnist-dir", tmp_path / "no-mnist",
                            "--out", "/sys/run"], "--out /sys/run")


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permissions")
def test_unreadable_files_for_a_normal_user(capsys, tmp_path, checkpoint, images):
    locked = tmp_path / "locked.npy"
    shutil.copy(images, locked)
    locked.chmod(0)
    one_line_error(capsys, ["eval", "--fake", locked, "--mnist-dir", tmp_path], "locked.npy")
    run = tmp_path / "run"
    shutil.copytree(checkpoint, run)
    (run / "latest.json").chmod(0)
    one_line_error(capsys, ["sample", "--checkpoint", run, "--out", tmp_path / "x.png"], "latest.json")
