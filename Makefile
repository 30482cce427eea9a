# Two commands for a fresh machine with Python 3.11:
#   make demo   - Wide-ResNet on the bundled digits, 2 MPI ranks
#   make test   - the whole test suite (real MPI ranks included)
# Both build the virtual environment they need in .venv first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RANKS  ?= 2

.PHONY: demo test bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch as Keras' backend (an unpinned torch pulls CUDA).
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[keras,mpich,data,dev]"
	touch $@

demo: venv
	KERAS_BACKEND=torch $(BIN)/mpiexec -n $(RANKS) $(BIN)/python zoo/keras_wresnet.py

test: venv
	KERAS_BACKEND=torch $(BIN)/python -m pytest tests -q

bench: venv
	$(BIN)/mpiexec -n $(RANKS) $(BIN)/python benchmarks/exchange.py

clean:
	rm -rf $(VENV) build *.egg-info
