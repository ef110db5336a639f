"""Environment capture: CANN's release read from toolkit trees laid out like real hosts (no Ascend needed)."""

from __future__ import annotations

from pathlib import Path

from portcheck.env.versions import CANN_UNREADABLE, cann_version

# The head of a real CANN 8.x toolkit's latest/version.cfg: the first line is the file format's version.
VERSION_CFG = """# version: 1.0
runtime_running_version=[7.6.0.1.220:8.5.1]
compiler_running_version=[7.6.0.1.220:8.5.1]
toolkit_running_version=[7.6.0.1.220:8.5.1]
"""
INSTALL_INFO = """package_name=Ascend-cann-toolkit
version=8.3.RC1
innerversion=V100R001C23SPC001B230
arch=aarch64
os=linux
"""


def toolkit(tmp_path: Path, files: dict[str, str]) -> str:
    root = tmp_path / "Ascend" / "ascend-toolkit" / "latest"
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(root)


def test_release_comes_from_toolkit_running_version_not_the_format_line(tmp_path):
    assert cann_version((toolkit(tmp_path, {"version.cfg": VERSION_CFG}),)) == "8.5.1"


def test_install_info_under_the_arch_directory(tmp_path):
    root = toolkit(tmp_path, {"version.cfg": "# version: 1.0\n", "aarch64-linux/ascend_toolkit_install.info": INSTALL_INFO})
    assert cann_version((root,)) == "8.3.RC1"


def test_version_info_gives_its_release_directory_not_the_inner_build(tmp_path):
    root = toolkit(tmp_path, {"runtime/version.info": "Version=7.6.0.1.220\nversion_dir=8.0.0\n"})
    assert cann_version((root,)) == "8.0.0"


def test_a_tree_without_a_readable_release_is_unknown_not_one_point_zero(tmp_path):
    root = toolkit(tmp_path, {"version.cfg": "# version: 1.0\n", "runtime/version.info": "Version=7.6.0.1.220\n"})
    assert cann_version((root,)) == CANN_UNREADABLE


def test_no_tree_is_absent(tmp_path):
    assert cann_version((str(tmp_path / "nowhere"),)) is None


def test_float_kernel_flags_are_the_listed_ones_the_cpu_has_in_a_fixed_order():
    from portcheck.env.capture import float_kernel_flags

    cpuinfo = "processor\t: 0\nflags\t\t: fpu avx2 sse amx_tile avx512f amx_bf16 avx512_fp16\nbogomips\t: 1\n"
    assert float_kernel_flags(cpuinfo) == ["amx_bf16", "amx_tile", "avx512_fp16", "avx512f", "avx2"]
    assert float_kernel_flags("flags\t: fpu sse2\n") == []
    assert float_kernel_flags("processor\t: 0\n") is None  # no flags line: unknown, not "none"
