# medvision: `make demo` runs the main job on the embedded demo data, `make test` runs the suite.
# Both create .venv when missing and install the project into it (again only when pyproject.toml changes).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medvision-installed
DEMO_DIR ?= data/demo
MLFLOW_PORT ?= 5000
MLFLOW_DIR ?= mlflow-server
# pip prints one warning per local package index it cannot use; they are noise here.
# (braces keep pip's own exit status under pipefail: grep finding nothing to print is not a failure)
PIP_FILTER := { grep -v -e "is ignored: it is neither a file nor a directory" || true; }

.PHONY: install demo demo-data test test-slow lint bench bench-io bench-deid bench-pacs bench-train clean mlflow-server system-deps fuzz pacs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing medvision and its dependencies into $(VENV) (first time: several minutes)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | $(PIP_FILTER)
	@$(BIN)/python -c "import medvision, torch, torchvision, monai, pydicom; print('installed: medvision', medvision.__version__, '| torch', torch.__version__, '| monai', monai.__version__)"
	@touch $@

install: $(STAMP)

demo-data: install
	$(BIN)/medvision demo-data --out $(DEMO_DIR) --seed 0

demo: demo-data
	$(BIN)/medvision inspect $(DEMO_DIR)/mri/dicom/BRAIN_001 $(DEMO_DIR)/mri/imagesTr/BRAIN_001.nii.gz
	$(BIN)/medvision train configs/pneumonia_demo.yaml --set data.path=$(DEMO_DIR)/cxr/manifest.csv
	$(BIN)/medvision train configs/tumor_detection_demo.yaml --set data.path=$(DEMO_DIR)/mri/detection.json
	$(BIN)/medvision demo-data --out $(DEMO_DIR)-external --seed 1 --cxr-patients 24 --mri-volumes 10 --mri-dicom 1 > /dev/null
	@echo "evaluating the registered models on an external demo set (seed 1, patients never seen in training):"
	$(BIN)/medvision evaluate --model models:/pneumonia-classifier@candidate --data $(DEMO_DIR)-external/cxr/manifest.csv --out outputs/pneumonia-demo/external
	$(BIN)/medvision evaluate --model models:/tumor-detector@candidate --data $(DEMO_DIR)-external/mri/detection.json --out outputs/tumor-detection-demo/external
	@echo "tumour boxes (RAS mm) in an external DICOM MR series:"
	$(BIN)/medvision predict --model models:/tumor-detector@candidate $(DEMO_DIR)-external/mri/dicom/BRAIN_001
	@rm -rf $(DEMO_DIR)-external/studies && mkdir -p $(DEMO_DIR)-external/studies
	@cp -r $(DEMO_DIR)-external/cxr/dicom $(DEMO_DIR)-external/studies/radiographs
	@cp -r $(DEMO_DIR)-external/mri/dicom $(DEMO_DIR)-external/studies/mri-dicom
	@cp -r $(DEMO_DIR)-external/mri/imagesTr $(DEMO_DIR)-external/studies/mri-nifti
	@echo "batch report of the external demo studies (radiographs, a DICOM MR series, NIfTI volumes):"
	$(BIN)/medvision report --input $(DEMO_DIR)-external/studies --out outputs/report-demo --image-format jpeg --secondary-capture
	@echo "the same report de-identified to share (DICOM PS3.15 Basic Profile; pictures withheld where burned-in text is possible):"
	$(BIN)/medvision report --config configs/report_deidentified.yaml --input $(DEMO_DIR)-external/studies --out outputs/report-demo-deidentified
	@echo "MLflow: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db   (runs, evidence, registered model)"

# A local MLflow tracking server: runs and registered models in SQLite, artifacts served through the
# server (clients need no shared folder). Train into it with --set tracking.uri=http://127.0.0.1:$(MLFLOW_PORT).
# MLflow's GenAI job runner (eight extra processes) is not needed here.
mlflow-server: install
	@mkdir -p $(MLFLOW_DIR)/artifacts
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 \
		--backend-store-uri sqlite:///$(MLFLOW_DIR)/mlflow.db --artifacts-destination ./$(MLFLOW_DIR)/artifacts

# A local Orthanc to try medvision as a PACS node: the demo studies (written by make demo-data when missing)
# uploaded, its web viewer on http://127.0.0.1:$(PACS_HTTP_PORT)/app/explorer.html, `medvision listen` known as the
# modality MEDVISION on port $(LISTENER_PORT) with a routing rule sending it every new study. Loopback only; the
# password is new at each start (outputs/pacs/credentials.json). Runs in the foreground; Ctrl-C stops it.
PACS_HTTP_PORT ?= 8042
PACS_DICOM_PORT ?= 4242
LISTENER_PORT ?= 11112
pacs: install system-deps
	@test -d $(DEMO_DIR)/cxr/dicom || $(MAKE) --no-print-directory demo-data
	$(BIN)/python -m medvision.pacs.orthanc --data $(DEMO_DIR) --root outputs/pacs --http-port $(PACS_HTTP_PORT) \
		--dicom-port $(PACS_DICOM_PORT) --listener-port $(LISTENER_PORT)

lint: install
	$(BIN)/ruff check medvision tests benchmarks pipelines

# Debian packages the tests drive: headless Chromium opens index.html, poppler-utils (pdftoppm,
# pdftotext) reads report.pdf, dcm2niix is the reference DICOM series converter tests/io/test_dcm2niix.py
# compares with, dicom3tools (dciodvfy) and dcmtk (dsrdump, dcmdump) validate every DICOM object
# medvision writes (tests/test_validators.py), orthanc with orthanc-dicomweb is the real PACS tests/pacs
# search, retrieve and store against (DICOMweb and DIMSE; started there as a plain process on free loopback
# ports, never as the system service; Debian puts the binary in /usr/sbin). Installed with apt-get (as root)
# when missing; `apt-get update` only if needed.
SYSTEM_DEPS := chromium poppler-utils dcm2niix dicom3tools dcmtk orthanc orthanc-dicomweb
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $(SYSTEM_DEPS)

system-deps:
	@if command -v chromium >/dev/null && command -v pdftoppm >/dev/null && command -v pdftotext >/dev/null \
		&& command -v dcm2niix >/dev/null && command -v dciodvfy >/dev/null && command -v dsrdump >/dev/null \
		&& { command -v Orthanc >/dev/null || test -x /usr/sbin/Orthanc; } \
		&& test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so; then \
		echo "system packages present: chromium, poppler-utils, dcm2niix, dicom3tools, dcmtk, orthanc, orthanc-dicomweb"; \
	else \
		echo "installing $(SYSTEM_DEPS) with apt-get (needed by tests/reporting, tests/io/test_dcm2niix.py, tests/test_validators.py and tests/pacs)"; \
		$(APT_INSTALL) || { apt-get -o DPkg::Lock::Timeout=600 update -qq && $(APT_INSTALL); } \
		|| { echo "error: could not install $(SYSTEM_DEPS); run as root or install them by hand" >&2; exit 1; }; \
	fi

test: lint system-deps
	$(BIN)/pytest -m "not slow"

test-slow: install
	$(BIN)/pytest -m slow

# Fuzz campaign on medvision.io's trust boundary: seeded, bounded by time (FUZZ_SECONDS), mutated DICOM/NIfTI
# files and series from pydicom's, pydicom-data's, deid-data's and nibabel's test files. Prints the counts per
# outcome and mutation class; failing inputs are kept in outputs/fuzz-failures/ (case.json, findings.md).
FUZZ_SECONDS ?= 600
FUZZ_SEED ?= 0
fuzz: install
	$(BIN)/python -m tests.io.fuzz_campaign --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED) --out outputs/fuzz-failures

bench-io: install
	$(BIN)/python benchmarks/bench_io.py

bench-deid: install
	$(BIN)/python benchmarks/bench_deid.py

# Batch report through a local Orthanc (DICOMweb, DIMSE) against the folder report; needs make system-deps.
bench-pacs: install system-deps
	$(BIN)/python benchmarks/bench_pacs.py

bench-train: install
	$(BIN)/python benchmarks/bench_train.py

bench: bench-io bench-train

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache data/demo
