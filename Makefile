# ota-pipeline. One target dir outside the clone, shared by builds, tests and CI, so the
# bundled DuckDB (a long C++ build) compiles once per machine.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ota-pipeline/target
# The Docker client (one with Compose v2 and BuildKit).
DOCKER ?= docker

.PHONY: build demo test bench chaos lint fmt image up password down smoke

build:
	cargo build --release -p ota-cli --bins

## Runs the whole pipeline on the embedded default, generating sample data first if data/
## has none. MySQL: OTA_MYSQL_URL, else 127.0.0.1:3306, else a project-local MariaDB
## started for it. Dev build by default; PROFILE=release for benchmarks and real volumes.
demo:
	scripts/demo.sh

## The tests: unit tests plus end-to-end runs against a real MySQL/MariaDB server
## (OTA_TEST_MYSQL_URL, else 127.0.0.1:3306, else a project-local MariaDB started for it).
test:
	scripts/test.sh

## The fault harness (docs/operations.md, "Under faults"): kill -9 at random points,
## overlapping runs, a cut MySQL connection, a crashed MySQL server, a full disk under
## DuckDB and hostile input, each followed by a re-run and --reconcile; then the BigQuery
## cases (kill -9, overlapping runs, hostile input) on the emulators. Prints the tables of
## docs/operations.md. Needs root for the full disk (it mounts a tmpfs). CHAOS_SEED,
## CHAOS_KILLS (per step), CHAOS_OVERLAPS, CHAOS_CUTS, CHAOS_RESTARTS, CHAOS_DISK_FULLS,
## CHAOS_BUDGET_SECS.
CHAOS = $(CARGO_TARGET_DIR)/debug/ota-chaos --bin-dir $(CARGO_TARGET_DIR)/debug
chaos:
	cargo build -q -p ota-cli --bins -p ota-chaos
	scripts/with-mysql.sh sh -c '$(CHAOS) --server-url $$OTA_TEST_MYSQL_URL'
	scripts/with-mysql.sh scripts/with-emulators.sh $(CHAOS) --on-emulators --kills-per-step 3 \
	  --overlaps-per-step 2 --budget-secs 90

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$$(scripts/airflow-venv.sh)/bin/ruff check dags tests
	$$(scripts/airflow-venv.sh)/bin/ruff format --check dags tests
	$$(scripts/airflow-venv.sh)/bin/hadolint docker/Dockerfile docker/airflow.Dockerfile docker/stand-ins/*.Dockerfile
	$$(scripts/airflow-venv.sh)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

fmt:
	cargo fmt --all
	$$(scripts/airflow-venv.sh)/bin/ruff format dags tests

## Builds the pipeline image (needs a Docker engine).
image:
	$(DOCKER) build -f docker/Dockerfile -t $${OTA_IMAGE:-ota-pipeline:latest} .

## Builds and starts the stack: Airflow (http://127.0.0.1:8080, login admin), MySQL, and
## the seed of sample data in the ota-data volume; then prints Airflow's password, which
## the stack generated at its first start (`make password` prints it again). `make down`
## stops it (the volumes stay; `docker compose down -v` removes them too).
up:
	$(DOCKER) compose up -d --build --wait
	@$(MAKE) -s password

password:
	@echo "Airflow: http://127.0.0.1:$${OTA_AIRFLOW_PORT:-$$(sed -n 's/^OTA_AIRFLOW_PORT=//p' .env)}, login admin, password:"
	@$(DOCKER) compose exec -T airflow python3 -c \
	  'import json; print(json.load(open("/opt/airflow/simple_auth_manager_passwords.json.generated"))["admin"])'

down:
	$(DOCKER) compose down

## The stack for real: a Docker engine (started or installed), local stand-ins for base
## images no registry gives, the image from this workspace's binaries, both DAGs through
## the REST API, MySQL checked, a re-run that writes nothing, then down -v. Part of make test.
smoke:
	scripts/smoke.sh

## Speed and memory figures: each step, and the export against MySQL's own LOAD DATA and a
## naive loader (docs/performance.md). ROWS_PER_DAY, DAYS, REPEAT, STEADY_ROWS_PER_DAY.
bench:
	scripts/with-mysql.sh scripts/bench.sh
