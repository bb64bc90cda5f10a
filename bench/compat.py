"""Which transformers releases does ExpLLM work on? For every transformers 5.x minor from pyproject's lower bound to
the newest on the package index (the highest patch of each), in a throwaway venv where pip resolves the project's
dependencies around that transformers, this runs the project's own tests of what a user does:

  bare env   a saved folder in a process that cannot import the project: every AutoClass,
             pipeline("image-text-to-text"), batched generate, predict_expression; and a folder saved by release
             0.1.0 (tests/test_remote_code.py)
  model      forward, loss, batched and assisted generation, label scoring, tied embeddings, LoRA, bf16
             (tests/test_modeling.py, tests/test_processor.py)
  TRL LoRA   train_sft.py stage 1, then stage 2 with PEFT LoRA on both towers through TRL's SFTTrainer, adapter and
             merged folder (tests/test_training.py, the two stage tests)
  common     transformers' own ModelTesterMixin and ConfigTester from that release's sdist
             (tests/test_transformers_common.py)

and prints a table (version x check: passed/total) with the versions pip resolved for TRL, PEFT and accelerate.

    python bench/compat.py [--oldest 5.20] [--versions 5.22.2 5.24.0] [--work /tmp/expllm-compat] [--keep]

Each venv takes a few minutes the first time (pip's cache makes later runs faster); RESULTS.md records the table.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = {
    "bare env": ["tests/test_remote_code.py"],
    "model": ["tests/test_modeling.py", "tests/test_processor.py"],
    "TRL LoRA": [
        "tests/test_training.py::test_stage1_trains_the_projector_only",
        "tests/test_training.py::test_stage2_lora_adapter_and_merged_model",
    ],
    "common": ["tests/test_transformers_common.py"],
}
# Test tools the checks need beyond the project's own dependencies, at the versions of the lock.
TEST_TOOLS = ("pytest", "parameterized")
REPORTED = ("transformers", "tokenizers", "huggingface_hub", "accelerate", "peft", "trl")


def declared_lower_bound():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), encoding="utf-8") as file:
        match = re.search(r'"transformers>=([0-9.]+)', file.read())
    if match is None:
        raise ValueError("pyproject.toml declares no transformers lower bound")
    return match.group(1)


def available_versions():
    """Every transformers release on the package index, from `pip index versions`."""
    output = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "transformers"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Available versions: (.+)", output)
    if match is None:
        raise RuntimeError(f"cannot read the transformers releases from pip's answer:\n{output}")
    return [version.strip() for version in match.group(1).split(",")]


def newest_patch_of_each_minor(versions, oldest):
    """`X.Y.Z` strings -> the highest final release of each 5.x minor at or above `oldest` (X.Y), oldest first."""
    floor = tuple(int(part) for part in oldest.split(".")[:2])
    newest = {}
    for version in versions:
        if not re.fullmatch(r"\d+\.\d+\.\d+", version):
            continue  # pre-releases
        parts = tuple(int(part) for part in version.split("."))
        if parts[0] == 5 and parts[:2] >= floor and parts > newest.get(parts[:2], (0,)):
            newest[parts[:2]] = parts
    return [".".join(map(str, newest[minor])) for minor in sorted(newest)]


def locked_versions():
    with open(os.path.join(REPO_ROOT, "requirements.lock"), encoding="utf-8") as file:
        pins = dict(line.strip().split("==", 1) for line in file if "==" in line and not line.startswith("#"))
    return pins


def build_venv(folder, transformers_version, log):
    """A venv with torch (constraints.txt), the project and the test tools, pip resolving around `transformers==X`."""
    pins = locked_versions()
    python = os.path.join(folder, "bin", "python")
    steps = [
        [sys.executable, "-m", "venv", folder],
        [python, "-m", "pip", "install", "-q", f"pip=={pins['pip']}"],
        [python, "-m", "pip", "install", "-q", "-c", "constraints.txt", "torch"],
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            "constraints.txt",
            f"transformers=={transformers_version}",
            "-e",
            ".",
            *(f"{tool}=={pins[tool]}" for tool in TEST_TOOLS),
        ],  # fmt: skip
    ]
    for command in steps:
        subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return python


def installed_versions(python):
    script = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    return json.loads(subprocess.run([python, "-c", script, *REPORTED], capture_output=True, text=True).stdout)


def run_check(python, tests, log, report_path):
    """(passed, total) of a pytest run, read from its JUnit report."""
    import xml.etree.ElementTree as ElementTree

    subprocess.run([python, "tests/transformers_suite.py"], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report_path}", *tests]
    subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    if not os.path.exists(report_path):
        return 0, 0
    suite = ElementTree.parse(report_path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
    skipped = int(suite.get("skipped"))
    return total - failed - skipped, total - skipped


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oldest", default=None, help="oldest minor to check (default: pyproject's lower bound)")
    parser.add_argument("--versions", nargs="*", help="exact versions instead of one per minor")
    parser.add_argument("--work", default=None, help="folder for the venvs and logs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the venvs afterwards")
    args = parser.parse_args()

    versions = args.versions or newest_patch_of_each_minor(available_versions(), args.oldest or declared_lower_bound())
    work = args.work or tempfile.mkdtemp(prefix="expllm-compat-")
    os.makedirs(work, exist_ok=True)
    print(f"transformers {', '.join(versions)}; venvs and logs in {work}", flush=True)
    rows = []
    for version in versions:
        started = time.perf_counter()
        folder = os.path.join(work, f"venv-{version}")
        log_path = os.path.join(work, f"{version}.log")
        with open(log_path, "w") as log:
            try:
                python = build_venv(folder, version, log)
            except subprocess.CalledProcessError:
                rows.append({"version": version, "install": f"FAILED (see {log_path})"})
                print(f"{version}: install failed, see {log_path}", flush=True)
                continue
            row = {"version": version, "install": "ok", **installed_versions(python)}
            for name, tests in CHECKS.items():
                report = os.path.join(work, f"{version}-{name.replace(' ', '_')}.xml")
                passed, total = run_check(python, tests, log, report)
                row[name] = f"{passed}/{total}" + ("" if passed == total and total else " FAILED")
                print(f"{version} {name}: {row[name]}", flush=True)
        row["minutes"] = f"{(time.perf_counter() - started) / 60:.1f}"
        rows.append(row)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    columns = ["version", *CHECKS, "trl", "peft", "accelerate", "tokenizers", "huggingface_hub", "minutes"]
    print()
    print("| transformers | " + " | ".join(columns[1:]) + " |")
    print("| --- " * len(columns) + "|")
    for row in rows:
        if row["install"] != "ok":
            print(f"| {row['version']} | {row['install']} |" + " |" * (len(columns) - 2))
            continue
        print("| " + " | ".join(str(row.get(column, "")) for column in columns) + " |")
    broken = [row["version"] for row in rows if row["install"] != "ok" or any("FAILED" in row[c] for c in CHECKS)]
    verdict = f"; broken: {broken}" if broken else ""
    print(f"\n{len(rows) - len(broken)} of {len(rows)} versions pass every check{verdict}")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
