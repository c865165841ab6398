"""docs/own-project.md, done as a new user does it: every `sh` block of the page, word for word and in
order, in one shell, in an empty folder, with census_stripe installed by `pip install` from a copy of
this checkout (a wheel built from it, not an editable install), then checked against what the local
Stripe holds. Then docs/deploy.md's image recipe, built on the project the page made.

Only the installing is shortened, never the commands: the folder's virtualenv is made beforehand
and sees this test's installed packages (a .pth file naming a view of them without census_stripe, and
their console scripts), as a warm package cache would, so `pip install` adds just census_stripe and
the new project. The page's `python3 -m venv .venv` then finds it made.
"""

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from census_stripe.demo.stripe_server import SERVER_MODULE, TEST_KEY, Server
from census_stripe.settings import PROJECT_ROOT

WALKTHROUGH = PROJECT_ROOT / "docs" / "own-project.md"
DEPLOY_GUIDE = PROJECT_ROOT / "docs" / "deploy.md"
NOT_RUN = "<!-- not run by the test"
PROJECT = "billing"  # the folder the page makes


def shell_blocks(page: str) -> list[str]:
    """The page's `sh` blocks in order, less those marked as not run (they need a real Stripe key)."""
    blocks = []
    for block in re.finditer(r"^```sh\n(.*?)^```$", page, re.S | re.M):
        line_before = page[: block.start()].rstrip().splitlines()[-1]
        if not line_before.startswith(NOT_RUN):
            blocks.append(block.group(1))
    return blocks


def copy_checkout(target: Path) -> None:
    """The files of this checkout a clone would hold (committed or not, never what Git ignores)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = PROJECT_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def is_census_stripe(entry: str) -> bool:
    return entry.startswith(("census_stripe", "__editable__.census_stripe", "__editable___census_stripe"))


def prepare_virtualenv(venv: Path, view: Path) -> None:
    """A virtualenv that sees this test's packages but census_stripe, with their console scripts."""
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    installed = Path(sysconfig.get_paths()["purelib"])
    view.mkdir()
    for entry in installed.iterdir():
        if not is_census_stripe(entry.name):
            (view / entry.name).symlink_to(entry)
    # addsitedir, so that the view's own .pth files (namespace packages) are read too.
    (
        venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "view.pth"
    ).write_text(f"import site; site.addsitedir({str(view)!r})\n")
    python = venv / "bin" / "python"
    for distribution in importlib.metadata.distributions():
        if distribution.metadata["Name"].replace("-", "_") == "census_stripe":
            continue
        for entry_point in distribution.entry_points.select(group="console_scripts"):
            script = venv / "bin" / entry_point.name
            if script.exists():
                continue
            module, _, function = entry_point.value.partition(":")
            script.write_text(f"#!{python}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
            script.chmod(0o755)


def stop_left_running(project: Path) -> None:
    """The local Stripe the page started, if the page failed before it stopped it."""
    try:
        server = Server(**json.loads((project / "data" / "local_stripe.pid").read_text()))
    except (OSError, ValueError):
        return
    if server.is_running():
        process = psutil.Process(server.pid)
        process.terminate()
        process.wait(timeout=60)


@dataclass(frozen=True)
class Walkthrough:
    home: Path
    project: Path
    env: dict[str, str]
    done: subprocess.CompletedProcess

    @property
    def output(self) -> str:
        return self.done.stdout + self.done.stderr


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> Walkthrough:
    """The page's commands, run once for this file's tests."""
    root = tmp_path_factory.mktemp("own_project")
    home, project = root / "home", root / PROJECT
    copy_checkout(home / "src" / "census_stripe")  # the page's `~/src/census_stripe`
    prepare_virtualenv(project / ".venv", root / "installed_packages")
    python3 = root / "bin" / "python3"  # the page's `python3`: the Python this test runs on
    python3.parent.mkdir()
    python3.symlink_to(sys._base_executable)
    blocks = shell_blocks(WALKTHROUGH.read_text())
    assert len(blocks) >= 8 and "dg launch --assets" in "".join(blocks)
    script = root / "walkthrough.sh"
    script.write_text("".join(blocks))
    # A user's shell: none of this checkout's settings, its virtualenv or its Stripe key.
    env = {"HOME": str(home), "PATH": f"{python3.parent}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    try:
        done = subprocess.run(
            ["bash", "-e", "-x", "-o", "pipefail", str(script)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        stop_left_running(project)
    return Walkthrough(home, project, env, done)


def test_the_own_project_walkthrough_runs_as_written(walkthrough):
    project, done, output = walkthrough.project, walkthrough.done, walkthrough.output
    assert done.returncode == 0, output[-6000:]

    # census_stripe came from the wheel, not from this checkout.
    installed = list((project / ".venv" / "lib").glob("python3*/site-packages/census_stripe/__init__.py"))
    assert len(installed) == 1, output[-3000:]
    assert "stripe/paying_users" in done.stdout
    assert "RUN_SUCCESS" in output

    # The local Stripe saved what the sync wrote, in the project's data folder.
    store = json.loads((project / "data" / "local_stripe.json").read_text())
    customers = {c["email"]: (c["name"], c["metadata"]) for c in store["customers"]}
    assert customers == {
        "ada@example.com": ("Ada Lovelace", {"plan": "pro"}),
        "alan@example.com": ("Alan Turing", {"plan": "team"}),
        "grace@example.com": ("Grace Hopper", {"plan": "pro"}),
    }
    assert (project / "data" / "warehouse.duckdb").exists()
    # `stop` took out of .env what `start` put there, and nothing ran on after the page.
    assert TEST_KEY not in (project / ".env").read_text()
    assert not any(
        SERVER_MODULE in " ".join(p.info["cmdline"] or []) and str(project) in " ".join(p.info["cmdline"] or [])
        for p in psutil.process_iter(["cmdline"])
    )
    assert not (project / "data" / "local_stripe.pid").exists()


def fenced(page: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", page, re.S | re.M)


def ignored(relative: Path, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns (a path, or `**/` and a name at any depth) leave this out."""
    for pattern in patterns:
        if pattern.startswith("**/"):
            if pattern[3:] in relative.parts:
                return True
        elif relative.as_posix() == pattern or relative.as_posix().startswith(pattern + "/"):
            return True
    return False


def test_the_deploy_guides_image_recipe_builds_on_the_walkthroughs_project(walkthrough):
    """docs/deploy.md's image, built as far as this machine can without Docker: its host command, then
    each COPY (less what .dockerignore leaves out) into an empty folder and each RUN there, with the
    walkthrough's virtualenv as the image's Python; then the definitions load there without dbt."""
    assert walkthrough.done.returncode == 0, walkthrough.output[-3000:]
    guide = DEPLOY_GUIDE.read_text()
    [host] = [block for block in fenced(guide, "sh") if "docker build" in block]
    [dockerfile] = fenced(guide, "dockerfile")
    [dockerignore] = [block for block in fenced(guide, "text") if ".env" in block.split()]
    venv_bin = walkthrough.project / ".venv" / "bin"
    env = walkthrough.env | {"PATH": f"{venv_bin}:{walkthrough.env['PATH']}", "VIRTUAL_ENV": str(venv_bin.parent)}

    def run(command: str, cwd: Path) -> None:
        done = subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"

    context = walkthrough.project
    for line in host.splitlines():
        if not line.startswith("docker build"):  # no Docker here
            run(line, context)
    patterns = dockerignore.split()
    image = context.parent / "image"
    for instruction in dockerfile.splitlines():
        keyword, _, argument = instruction.partition(" ")
        if keyword == "COPY":
            source, target = (context / argument.split()[0]), image / argument.split()[1]
            files = [path for path in source.rglob("*") if path.is_file()] if source.is_dir() else [source]
            for path in files:
                if not ignored(path.relative_to(context), patterns):
                    destination = target / (path.relative_to(source) if source.is_dir() else path.name)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, destination)
        elif keyword == "ENV":
            name, _, value = argument.partition("=")
            env[name] = value
        elif keyword == "RUN":
            run(argument, image)
    assert not list(image.rglob(".env")) and not list(image.rglob("warehouse.duckdb"))

    # The manifest was made at build time, for the image's warehouse (PostgreSQL: its schema).
    manifest = image / "dbt" / "target" / "manifest.json"
    [model] = [node for node in json.loads(manifest.read_text())["nodes"].values() if node["name"] == "paying_users"]
    assert model["schema"] == "public"
    assert list(image.glob("src/billing/defs/.local_defs_state/*"))
    made = manifest.stat().st_mtime_ns
    # A process of the image loads the definitions from what the build made, parsing nothing.
    loaded = subprocess.run(
        ["dagster", "definitions", "validate", "-m", "billing.definitions"],
        cwd=image,
        env=env,
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stdout[-3000:] + loaded.stderr[-3000:]
    assert manifest.stat().st_mtime_ns == made
