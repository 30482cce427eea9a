# Two commands for a fresh machine with Python 3.11:
#   make demo   - Wide-ResNet on the bundled digits, 2 MPI ranks
#   make test   - the whole test suite (real MPI ranks included), in three
#                 environments: .venv (numpy 2: Keras 3 on torch and on JAX,
#                 PyTensor), .venv-theano (numpy < 1.24: Theano 1.0.5,
#                 Lasagne 0.1) and .venv-tf (Keras 3 on TensorFlow)
# Each builds the virtual environments it needs first.

PYTHON ?= python3
VENV   ?= .venv
TVENV  ?= .venv-theano
# TensorFlow apart: with it installed, keras.utils.set_random_seed imports
# it on every backend (5 s of CPU per process, measured)
TFVENV ?= .venv-tf
BIN    := $(VENV)/bin
TBIN   := $(TVENV)/bin
TFBIN  := $(TFVENV)/bin
RANKS  ?= 2

.PHONY: demo test test-main test-theano test-keras-backends test-long bench \
	venv venv-theano venv-tf clean

venv: $(VENV)/.installed
venv-theano: $(TVENV)/.installed
venv-tf: $(TFVENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch as Keras' backend (an unpinned torch pulls CUDA).
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[keras,pytensor,mpich,data,dev]"
	# Keras' JAX backend (CPU)
	$(BIN)/pip install --quiet "jax[cpu]"
	touch $@

$(TFVENV)/.installed: setup.py
	$(PYTHON) -m venv $(TFVENV)
	$(TFBIN)/pip install --quiet --upgrade pip
	# torch (CPU) only for TMPISync.uneven, which hands fit a DataLoader
	$(TFBIN)/pip install --quiet "torch==2.13.0" tensorflow-cpu
	$(TFBIN)/pip install --quiet -e ".[keras,mpich,data,dev]"
	touch $@

$(TVENV)/.installed: setup.py
	$(PYTHON) -m venv $(TVENV)
	$(TBIN)/pip install --quiet --upgrade pip "setuptools>=77.0.3,<81"
	$(TBIN)/pip install --quiet -e ".[theano,mpich,theano-dev]"
	# Blocks (on no registry) from ../shared/third_party, its dependencies
	# and Fuel 0.2.0 from PyPI; skipped where the tarball is absent (the
	# Blocks tests then skip). Fuel's optional C extension does not compile
	# on Python 3.11: CC=true LDSHARED=true build it as nothing, and Fuel
	# runs without it. tables==3.8.0 spares pip a long backtrack under
	# numpy<1.24. Blocks' package goes on the path through a .pth file (its
	# setup.py names a script the tarball lacks).
	@set -e; tarball=$$(ls ../shared/third_party/blocks-*.tar.gz 2>/dev/null | head -n 1); \
	if [ -z "$$tarball" ]; then \
		echo "no ../shared/third_party/blocks-*.tar.gz: Blocks not installed, its tests skip"; \
	else \
		$(TBIN)/pip install --quiet "numpy<1.24" six pyyaml toolz \
			picklable-itertools progressbar2 h5py pyzmq pillow requests \
			"tables==3.8.0"; \
		CC=true LDSHARED=true $(TBIN)/pip install --quiet --no-deps \
			--no-build-isolation "fuel==0.2.0"; \
		rm -rf $(TVENV)/src/blocks; mkdir -p $(TVENV)/src/blocks; \
		tar xzf "$$tarball" -C $(TVENV)/src/blocks --strip-components=1 \
			blocks/blocks blocks/LICENSE; \
		echo "$(abspath $(TVENV))/src/blocks" > "$$($(TBIN)/python -c \
			'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tmpi-third-party-blocks.pth"; \
		$(TBIN)/python -c "import blocks, fuel"; \
	fi
	touch $@

demo: venv
	KERAS_BACKEND=torch $(BIN)/mpiexec -n $(RANKS) $(BIN)/python zoo/keras_wresnet.py

test: hostbed-deps test-main test-theano test-keras-backends

# tests/test_hosts.py's emulated hosts need iproute2 (ip, tc) and root; as
# root without it, install it. Elsewhere those tests skip with the reason.
.PHONY: hostbed-deps
hostbed-deps:
	@command -v ip >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && apt-get install -y -qq iproute2) || true

test-main: venv
	KERAS_BACKEND=torch $(BIN)/python -m pytest tests -q

# What needs Theano/Lasagne, and the in-process tests (the core on numpy
# < 1.24); every test that launches ranks without Theano runs in test-main
# (markers set in tests/conftest.py).
test-theano: venv-theano
	$(TBIN)/python -m pytest tests -q -m "(theano or not launches) and not long"

# Every Keras test (marked keras in tests/conftest.py) on the JAX and the
# TensorFlow backend too, with their default compiled train steps.
test-keras-backends: venv venv-tf
	KERAS_BACKEND=jax $(BIN)/python -m pytest tests -q -m "keras and not long"
	KERAS_BACKEND=tensorflow $(TFBIN)/python -m pytest tests -q \
		-m "keras and not long"

# Full-size soaks and benchmarks (pytest.ini: marked long), minutes more.
test-long: venv
	KERAS_BACKEND=torch $(BIN)/python -m pytest tests -q -m long

bench: venv
	$(BIN)/mpiexec -n $(RANKS) $(BIN)/python benchmarks/exchange.py

clean:
	rm -rf $(VENV) $(TVENV) $(TFVENV) build *.egg-info
