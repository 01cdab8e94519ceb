# apd_ext: `make test` builds everything and runs the tests; `make demo` runs the main job on CPU.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: all build test pytest cpp-test cuda-emu-test kernel-check triton-aot ptxas-report demo train-tiny train-tiny-block bench bench-loop gpu-check gpu-suite clean

all: test

$(VENV)/.installed: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# The CPU ops always; the CUDA ops too when nvcc and a CUDA build of torch are present
# (a CUDA compile error fails the build: CI is where the CUDA code is compile-checked).
# Then the checkout is installed into the venv as an editable package (once), so that `import
# apd_ext` works from any directory of that environment.
# The extension first: the editable install's import check must not meet a stale one.
build: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace
	@$(MAKE) --no-print-directory $(VENV)/.editable

# APD_EXT_EXTENSION=0: the editable install registers the package only; build_ext --inplace above
# builds the extension beside the sources, incrementally.
$(VENV)/.editable: $(VENV)/.installed setup.py pyproject.toml
	@echo "pip install -e . into $(VENV) (log: $(VENV)/editable.log)"
	@APD_EXT_EXTENSION=0 $(PY) -m pip install --no-build-isolation --no-deps -e . > $(VENV)/editable.log 2>&1 \
	  || (cat $(VENV)/editable.log; exit 1)
	$(PY) -c "import apd_ext, os; assert os.path.dirname(apd_ext.__file__) == os.path.abspath('apd_ext'), apd_ext.__file__"
	touch $@

# The CUDA emulator's check needs neither the venv nor the extension: it runs beside the build (whose
# cold pip install mostly waits on downloads and disk), its output kept together by --output-sync.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target build cuda-emu-test
	@$(MAKE) --no-print-directory cpp-test kernel-check pytest

# Both cores (pytest-xdist: PYTEST_WORKERS processes stealing tests from each other, so that one long
# file does not leave a core idle); every worker runs torch on one thread, so the workers do not
# oversubscribe the cores.
PYTEST_WORKERS ?= 2
pytest: build
	APD_EXT_REQUIRE_EXTENSION=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q --durations=25 -n $(PYTEST_WORKERS) \
	  --dist worksteal python_tests

# What the interpreter and the emulator cannot check, without a GPU: every Triton kernel
# specialisation the launchers produce compiled for sm_80/sm_90 by Triton's compiler, and every CUDA
# kernel through ptxas; both print registers/spills per kernel and fail on a compile error or a spill.
kernel-check: triton-aot ptxas-report

triton-aot: $(VENV)/.installed
	$(PY) -m apd_ext.triton.aot --arch 80,90 --jobs $(MAX_JOBS)

ptxas-report:
	$(PY) bench/ptxas_report.py --archs 80,90 --jobs $(MAX_JOBS) --allow-missing-nvcc

# libapd (the C ABI) and its C++ tests, CPU build.
cpp-test: $(VENV)/.installed
	$(VENV)/bin/cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	$(VENV)/bin/cmake --build build/cmake -j $(MAX_JOBS)
	$(VENV)/bin/ctest --test-dir build/cmake --output-on-failure

# The CUDA kernels compiled as host code under a small CUDA emulator (csrc/cuda/emu), checked
# against the CPU backend on random cases: the kernels' logic runs even on machines without a GPU.
cuda-emu-test:
	bash csrc/cuda/emu/run.sh 150 12345

demo: build
	$(PY) -m apd_ext demo

# Retrains the bundled pair (apd_ext/tiny/assets) from scratch on one CPU thread, deterministically:
# the verifier (1,600 steps, ~6 min), then the dLLM in three stages (800 causal + 450 diffusion steps,
# ~17 min; 650 diffusion steps, ~9 min; 2,000 diffusion + causal steps, ~57 min): ~90 min in all.
# apd_ext/tiny/assets/README.md and apd_ext/tiny/train.py have the figures.
train-tiny: $(VENV)/.installed
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m apd_ext.tiny.train --out apd_ext/tiny/assets

train-tiny-block: $(VENV)/.installed
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m apd_ext.tiny.train_block --out apd_ext/tiny/assets

bench: build
	PYTHONPATH=. $(PY) bench/bench_ops.py

bench-loop: build
	PYTHONPATH=. $(PY) bench/bench_loop.py

# On a GPU machine (no package registry needed): build against the installed torch, run the tests
# on the GPU and the op benchmark (bench/device/README.md: the same commands, one by one, through
# the device tool); logs and CSVs under $OUT (default bench/results/device/).
gpu-check:
	bash bench/device/run_all.sh

# gpu-check plus the end-to-end benchmark at Dream-7B and Fast-dLLM-v2-7B / Qwen2.5-0.5B shapes (bench/bench_e2e.py).
gpu-suite:
	bash bench/device/run_all.sh --suite

clean:
	rm -rf build apd_ext/_C*.so *.egg-info
