# detkit: the two commands of the README.
#   make demo   set up .venv, then train/evaluate/draw on a generated data set
#   make test   set up .venv, then run the test suite on the CPU
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup test demo clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@# albumentations installs opencv-python-headless, whose cv2/ hides the contrib build's
	@# cv2.ximgproc (selective search). Reinstall the contrib wheel last, same version.
	$(BIN)/python -m pip install -q --force-reinstall --no-deps \
	  "opencv-contrib-python-headless==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opencv-contrib-python-headless"))')"
	$(BIN)/python -m detkit.utils.env_check
	touch $@

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/python tools/demo.py

clean:
	rm -rf $(VENV) outputs
