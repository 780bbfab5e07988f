# Two commands for a newcomer on a fresh machine:
#   make         set up the virtualenv and render the dev stack offline into rendered/dev
#   make test    also install redis-server and the test tools, build the pinned Pulumi CLI,
#                provider and Kubernetes control plane (cached outside the repository), then
#                run the whole test suite, on PYTEST_WORKERS parallel pytest-xdist workers
#                (PYTEST_WORKERS=0: serially, in this one process)
#   make lint    install ruff (the version the tests pin) if missing, then lint and check format
STACK ?= dev
# Workers of `make test`: the suite mostly waits (redis-server, Celery workers, local pods, a
# control plane), so 3 on 2 cores; what must not share a worker is grouped in tests/conftest.py
# (--dist loadgroup), queued in the order it lists (--no-loadscope-reorder).
PYTEST_WORKERS ?= 3

.PHONY: render test lint settings
render:
	scripts/bootstrap.sh
	mkdir -p rendered
	.venv/bin/python -m brokerctl render --stack $(STACK) --out rendered/$(STACK)

settings:
	scripts/bootstrap.sh
	.venv/bin/python -m brokerctl settings --stack $(STACK)

test:
	scripts/bootstrap.sh --test
	scripts/toolchain.sh
	.venv/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

lint:
	scripts/bootstrap.sh --lint
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
