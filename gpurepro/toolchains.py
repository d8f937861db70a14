"""Named toolchains (ci/toolchains.yaml): pinned CUDA wheels + FlashInfer/CUTLASS headers, one image per toolchain.

The file is validated with docs/schemas/toolchains.schema.json (JSON Schema 2020-12) and then with the rules a
schema cannot say (one default, one nvcc, a complete CUDA set); every problem is reported, one line each, exit 2.
Equivalence: two toolchains compile a step identically only if their header trees (FlashInfer + CUTLASS, as laid
out) hash the same AND their compiler wheels (nvcc, nvvm, crt, runtime, cccl, curand: the CUDA headers and the
compiler itself) are the same files; `equivalence_groups` reports such toolchains together so each runs once.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import pathlib
import re
from dataclasses import dataclass, field

import yaml

from .errors import BadInputError, InfraError

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOLCHAINS_FILE = "ci/toolchains.yaml"
SCHEMA_FILE = ROOT / "docs" / "schemas" / "toolchains.schema.json"
PATCHES_FILE = "patches.yaml"   # in the manifest's patches/ directory
ALL = "all"
DEFAULT_ALIAS = "latest"
NVCC_WHEELS = ("nvidia-cuda-nvcc", "nvidia-cuda-nvcc-cu12")
HEADER_WHEELS = ("flashinfer-python",)
# the wheels that are not part of what a compile sees (cuobjdump only lists a binary's images)
NOT_COMPILER = ("nvidia-cuda-cuobjdump", "nvidia-cuda-cuobjdump-cu12")
REQUIRED_CUDA = {
    13: ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-runtime", "nvidia-cuda-cccl"),
    12: ("nvidia-cuda-nvcc-cu12", "nvidia-cuda-runtime-cu12", "nvidia-cuda-cccl-cu12"),
}


class ToolchainFileError(BadInputError):
    """ci/toolchains.yaml fails validation: one line per problem (exit 2)."""

    def __init__(self, path, problems: list[str]):
        self.path = str(path)
        self.problems = [f"{path}: {p}" for p in problems]
        super().__init__(self.problems[0] if len(problems) == 1 else f"{path}: {len(problems)} problems")

    def one_line(self) -> str:
        # one line per problem: a user fixing pins wants all of them at once
        return "\n".join(self.problems)


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str

    def requirement(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True)
class Toolchain:
    name: str
    cutlass_version: str
    wheels: tuple[Pin, ...]
    default: bool = False
    description: str = ""
    cutlass_wheel: Pin | None = None          # nvidia-cutlass: its C++ headers replace FlashInfer's CUTLASS
    cutlass_git: dict | None = None           # {"url", "commit", "tag"?}: needs network
    base_image: str | None = None             # a CUDA devel image providing nvcc (the -cu12 wheels carry none)
    declared_nvcc: str | None = field(default=None, repr=False)

    def pin(self, name: str) -> Pin | None:
        return next((p for p in self.wheels if p.name == name), None)

    @property
    def nvcc_version(self) -> str:
        nvcc = next((p for p in self.wheels if p.name in NVCC_WHEELS), None)
        return self.declared_nvcc or (nvcc.version if nvcc else "unknown")

    @property
    def flashinfer_version(self) -> str:
        return self.pin("flashinfer-python").version

    @property
    def cuda_major(self) -> int:
        return 12 if any(p.name.endswith("-cu12") for p in self.wheels) else 13

    @property
    def cuda_wheels(self) -> tuple[Pin, ...]:
        """pip-installed into the image's venv (one layer, shared by toolchains with the same pins)."""
        return tuple(p for p in self.wheels if p.name not in HEADER_WHEELS)

    @property
    def header_wheels(self) -> tuple[Pin, ...]:
        return (self.pin("flashinfer-python"),) + ((self.cutlass_wheel,) if self.cutlass_wheel else ())

    @property
    def all_pins(self) -> tuple[Pin, ...]:
        return self.wheels + ((self.cutlass_wheel,) if self.cutlass_wheel else ())

    @property
    def offline(self) -> bool:
        """Buildable from pinned wheels alone (no registry for a base image, no git fetch)."""
        return self.base_image is None and self.cutlass_git is None

    def headers_spec(self) -> dict:
        """What docker/layout_flashinfer.py --spec reads."""
        return {"flashinfer": self.pin("flashinfer-python").as_dict(),
                "cutlass_wheel": self.cutlass_wheel.as_dict() if self.cutlass_wheel else None,
                "cutlass_version": self.cutlass_version}

    def image(self, repository_or_ref: str) -> str:
        """`gpurepro/toolchain:latest` (or `gpurepro/toolchain`) -> `gpurepro/toolchain:<name>`."""
        return f"{repository(repository_or_ref)}:{self.name}"

    def image_tags(self, repository_or_ref: str) -> list[str]:
        """Every tag this toolchain's image gets: :<name>, and :latest for the default."""
        tags = [self.image(repository_or_ref)]
        if self.default:
            tags.append(f"{repository(repository_or_ref)}:{DEFAULT_ALIAS}")
        return tags

    def record(self) -> dict:
        """The exact versions, for run records and reports."""
        return {"name": self.name, "default": self.default, "nvcc": self.nvcc_version,
                "cutlass": self.cutlass_version, "flashinfer": self.flashinfer_version,
                "cutlass_source": ("nvidia-cutlass==" + self.cutlass_wheel.version if self.cutlass_wheel
                                   else f"git {self.cutlass_git['url']}@{self.cutlass_git['commit']}" if self.cutlass_git
                                   else "flashinfer-python"),
                "base_image": self.base_image,
                "wheels": [p.as_dict() for p in self.all_pins]}


def repository(ref: str) -> str:
    """The repository part of an image reference (the tag after the last '/' segment's ':' removed)."""
    head, _, last = ref.rpartition("/")
    name = last.split(":", 1)[0].split("@", 1)[0]
    return f"{head}/{name}" if head else name


@dataclass(frozen=True)
class Toolchains:
    path: pathlib.Path
    items: dict[str, Toolchain]

    @property
    def names(self) -> list[str]:
        return list(self.items)

    @property
    def default(self) -> Toolchain:
        return next(t for t in self.items.values() if t.default)

    def __getitem__(self, name: str) -> Toolchain:
        return self.select([name])[0]

    def select(self, names) -> list[Toolchain]:
        """Toolchains by name, in the file's order for "all", else in the order given (duplicates dropped).

        Accepts a list, "all", or a comma-separated string; "latest" names the default. Unknown -> exit 2.
        """
        if isinstance(names, str):
            names = [n for n in (s.strip() for s in names.split(",")) if n]
        if not names:
            raise BadInputError("no toolchain named", hint=f"use one of: {', '.join(self.names)}, or all")
        if ALL in names:
            return list(self.items.values())
        chosen: list[Toolchain] = []
        unknown = []
        for name in names:
            toolchain = self.default if name == DEFAULT_ALIAS else self.items.get(name)
            if toolchain is None:
                unknown.append(name)
            elif toolchain not in chosen:
                chosen.append(toolchain)
        if unknown:
            raise BadInputError(f"unknown toolchain{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                                f"in {self.path}", hint=f"known: {', '.join(self.names)}, or all")
        return chosen


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    return jsonschema.Draft202012Validator(schema)


def _where(error) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else (f".{part}" if parts else str(part)))
    return "".join(parts) or "(top)"


def _schema_problems(data) -> list[str]:
    problems = []
    for error in sorted(_validator().iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        # oneOf/allOf failures carry the useful reason in their context: report the deepest ones
        leaves = [e for e in error.context if not e.context] if error.context else [error]
        for leaf in leaves[:2] if error.validator == "oneOf" else leaves:
            message = leaf.message
            if leaf.validator == "pattern":
                message = _pattern_message(leaf)
            elif leaf.validator == "required":
                message = message.replace("is a required property", "is required (a pin needs name, version and sha256)") \
                    if "sha256" in message or "version" in message else message
            problems.append(f"{_where(leaf) if leaf is not error else _where(error)}: {message}")
    return list(dict.fromkeys(problems))


def _pattern_message(error) -> str:
    path = list(error.absolute_path)
    key = path[-1] if path else ""
    what = {"sha256": "sha256 (64 lowercase hex digits)", "version": "version (e.g. 13.0.88)",
            "cutlass_version": "CUTLASS version (x.y.z)", "commit": "commit (40 hex digits)"}.get(key)
    if what is None and not path:
        what = "value"
    if what is None and isinstance(key, str) and error.instance == key:
        what = "toolchain name (lowercase letters, digits, . _ -; not 'latest' or 'all')"
    return f"{error.instance!r} is not a valid {what or key}"


def _rule_problems(data: dict) -> list[str]:
    """What the schema cannot say."""
    problems = []
    toolchains = data.get("toolchains") or {}
    defaults = [name for name, t in toolchains.items() if isinstance(t, dict) and t.get("default") is True]
    if len(defaults) != 1:
        problems.append(f"toolchains: exactly one toolchain must have default: true, found "
                        f"{len(defaults)}{' (' + ', '.join(defaults) + ')' if defaults else ''}")
    for name, entry in toolchains.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("wheels"), list):
            continue
        where = f"toolchains.{name}"
        names = [w.get("name") for w in entry["wheels"] if isinstance(w, dict)]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"{where}.wheels: {dup} is pinned more than once")
        nvcc = [n for n in names if n in NVCC_WHEELS]
        if len(nvcc) != 1:
            problems.append(f"{where}.wheels: exactly one of {', '.join(NVCC_WHEELS)} is needed, found {len(nvcc)}")
        if names.count("flashinfer-python") != 1:
            problems.append(f"{where}.wheels: exactly one flashinfer-python pin is needed")
        cu12 = {n for n in names if isinstance(n, str) and n.endswith("-cu12")}
        cu13 = {n for n in names if isinstance(n, str) and n.startswith("nvidia-")} - cu12
        if cu12 and cu13:
            problems.append(f"{where}.wheels: CUDA 12 (-cu12) and CUDA 13 wheels mixed ({', '.join(sorted(cu13))})")
        major = 12 if cu12 else 13
        for needed in REQUIRED_CUDA[major]:
            if needed not in names:
                problems.append(f"{where}.wheels: {needed} is missing (a CUDA {major} toolchain needs "
                                f"{', '.join(REQUIRED_CUDA[major])})")
        if major == 12 and not entry.get("base_image"):
            problems.append(f"{where}: the -cu12 nvcc wheels carry no nvcc driver; set base_image to a CUDA 12 devel image")
        declared = entry.get("nvcc_version")
        wheel_nvcc = next((w.get("version") for w in entry["wheels"] if isinstance(w, dict) and w.get("name") in NVCC_WHEELS), None)
        if declared and wheel_nvcc and declared != wheel_nvcc and not entry.get("base_image"):
            problems.append(f"{where}.nvcc_version: {declared} but the nvcc wheel is {wheel_nvcc}")
    return problems


def _pin(raw: dict) -> Pin:
    return Pin(raw["name"], str(raw["version"]), raw["sha256"])


def parse_toolchains(data, path) -> Toolchains:
    problems = _schema_problems(data)
    if not problems:
        problems = _rule_problems(data)
    if problems:
        raise ToolchainFileError(path, problems)
    items = {}
    for name, entry in data["toolchains"].items():
        source = entry.get("cutlass_source") or {}
        items[name] = Toolchain(
            name=name, cutlass_version=entry["cutlass_version"], wheels=tuple(_pin(w) for w in entry["wheels"]),
            default=bool(entry.get("default")), description=entry.get("description", ""),
            cutlass_wheel=_pin(source["wheel"]) if "wheel" in source else None,
            cutlass_git=dict(source["git"]) if "git" in source else None,
            base_image=entry.get("base_image"), declared_nvcc=entry.get("nvcc_version"))
    return Toolchains(pathlib.Path(path), items)


def toolchains_file(config) -> pathlib.Path:
    """The project's ci/toolchains.yaml; a configuration kept elsewhere (GPUREPRO_CONFIG) uses the tool's own."""
    own = pathlib.Path(config.root) / TOOLCHAINS_FILE
    return own if own.is_file() else ROOT / TOOLCHAINS_FILE


def load_toolchains(path: str | pathlib.Path | None = None) -> Toolchains:
    """Read and validate a toolchain file (default: ci/toolchains.yaml at the project root)."""
    path = pathlib.Path(path) if path is not None else ROOT / TOOLCHAINS_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        # versions must stay strings: 13.0 read as a float would lose what it pins
        data = yaml.load(text, Loader=_StringVersionLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ToolchainFileError(path, [f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]) from None
    return parse_toolchains(data, path)


class _StringVersionLoader(yaml.SafeLoader):
    """SafeLoader that keeps unquoted decimals like 4.5 or 13.0 as written (no float), so pins survive as text."""


_StringVersionLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


# --- equivalence --------------------------------------------------------------------------------
def _layout_module():
    script = ROOT / "docker" / "layout_flashinfer.py"
    spec = importlib.util.spec_from_file_location("gpurepro_layout_flashinfer", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_wheel(pin: Pin, dirs: list[pathlib.Path]) -> pathlib.Path | None:
    from .images import sha256_file

    prefix = re.sub(r"[-_.]+", "_", pin.name).lower() + "-"
    for directory in dirs:
        for path in sorted(directory.glob("*.whl")) if directory.is_dir() else []:
            if path.name.lower().startswith(prefix) and sha256_file(path) == pin.sha256:
                return path
    return None


@functools.lru_cache(maxsize=32)
def _tree_hash_cached(flashinfer: pathlib.Path, cutlass: pathlib.Path | None, tree: pathlib.Path | None) -> str:
    layout = _layout_module()
    return layout.tree_hash(layout.plan(flashinfer, cutlass, tree))


def header_tree_hash(toolchain: Toolchain, wheel_dirs: list[pathlib.Path], *,
                     cutlass_tree: pathlib.Path | None = None) -> str:
    """sha256 of the FlashInfer/CUTLASS tree this toolchain lays out (paths + contents), read from its wheels."""
    if toolchain.cutlass_git and cutlass_tree is None:
        raise InfraError(f"toolchain {toolchain.name}: its CUTLASS comes from git ({toolchain.cutlass_git['url']}); "
                         "fetch it first", hint="build its image where the network reaches the repository")
    found = {}
    for pin in toolchain.header_wheels:
        found[pin.name] = find_wheel(pin, wheel_dirs)
        if found[pin.name] is None:
            raise InfraError(f"toolchain {toolchain.name}: no {pin.name}=={pin.version} wheel with the pinned sha256 in "
                             f"{', '.join(map(str, wheel_dirs))}", hint=f"run `invoke image.wheels --toolchain {toolchain.name}`")
    return _tree_hash_cached(found["flashinfer-python"], found.get("nvidia-cutlass"), cutlass_tree)


def compile_fingerprint(toolchain: Toolchain, wheel_dirs: list[pathlib.Path], *,
                        cutlass_tree: pathlib.Path | None = None) -> str:
    """Equal fingerprints compile identically: same header tree, same compiler and CUDA header wheels, same base."""
    compiler = sorted((p.name, p.sha256) for p in toolchain.cuda_wheels if p.name not in NOT_COMPILER)
    facts = {"headers": header_tree_hash(toolchain, wheel_dirs, cutlass_tree=cutlass_tree),
             "compiler": compiler, "base_image": toolchain.base_image}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def equivalence_groups(toolchains: list[Toolchain], wheel_dirs: list[pathlib.Path]) -> list[list[Toolchain]]:
    """Toolchains grouped by compile fingerprint, in the given order; the first of each group is the one to run."""
    groups: dict[str, list[Toolchain]] = {}
    for toolchain in toolchains:
        groups.setdefault(compile_fingerprint(toolchain, wheel_dirs), []).append(toolchain)
    return list(groups.values())


# --- patch applicability ------------------------------------------------------------------------
_SPEC_RE = re.compile(r"^(?P<op>>=|<=|==|!=|>|<)?\s*(?P<version>\d+(?:\.\d+)*)(?P<star>\.\*)?$")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def version_matches(version: str, spec: str) -> bool:
    """`4.5.*`, `4.5.0`, `>=4.3,<5`: every comma-separated clause must hold. Bad spec -> BadInputError."""
    have = _version_tuple(version)
    for clause in (c.strip() for c in spec.split(",")):
        match = _SPEC_RE.match(clause)
        if not match:
            raise BadInputError(f"bad CUTLASS version spec {clause!r}", hint="use e.g. 4.5.*, 4.5.0 or >=4.3,<5")
        want, op = _version_tuple(match["version"]), match["op"] or "=="
        if match["star"]:
            if op not in ("==", "!=") or (have[:len(want)] == want) != (op == "=="):
                return False
            continue
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        if not {"==": a == b, "!=": a != b, ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b}[op]:
            return False
    return True


def load_patch_declarations(patches_dir: pathlib.Path) -> dict[str, dict]:
    path = patches_dir / PATCHES_FILE
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except yaml.YAMLError as exc:
        raise BadInputError(f"{path}: not valid YAML: {exc}") from None
    patches = (data or {}).get("patches") or {}
    if not isinstance(patches, dict):
        raise BadInputError(f"{path}: patches: expected a mapping of patch file -> {{cutlass: [specs]}}")
    for name, entry in patches.items():
        specs = entry.get("cutlass") if isinstance(entry, dict) else None
        if not isinstance(specs, list) or not specs or not all(isinstance(s, str) for s in specs):
            raise BadInputError(f"{path}: patches.{name}.cutlass: expected a list of version specs (e.g. ['4.5.*'])")
        for spec in specs:
            version_matches("0", spec)  # a bad spec fails here, naming itself
    return patches


def patch_applies(patch_name: str, cutlass_version: str, patches_dir: pathlib.Path | None = None) -> bool | str:
    """True when the patch declares this CUTLASS version, else the reason (one line) for that cell's infra_error."""
    patches_dir = patches_dir or ROOT / "repros" / "patches"
    entry = load_patch_declarations(patches_dir).get(patch_name)
    if entry is None:
        return (f"patch {patch_name} declares no CUTLASS versions "
                f"(add it to {patches_dir.name}/{PATCHES_FILE}), so it is not applied to CUTLASS {cutlass_version}")
    if any(version_matches(cutlass_version, spec) for spec in entry["cutlass"]):
        return True
    return (f"patch {patch_name} does not apply to CUTLASS {cutlass_version} "
            f"(declared for {', '.join(entry['cutlass'])})")
