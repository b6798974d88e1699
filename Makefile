# One entry point for every task. `make test` is what CI runs (through .ci/run).
PYTHON ?= python
LIBASAN := $(shell gcc -print-file-name=libasan.so)

.PHONY: build debug asan tsan test bench fuzz powerloss lint clean

build:
	$(PYTHON) -m pip install .

debug:
	FASTACTOR_DEBUG=1 $(PYTHON) -m pip install .

# The extension and the cffi harness under AddressSanitizer + UBSan. Python itself is not
# instrumented, so libasan is preloaded and leak checking is left to the C tests' own runs.
asan:
	FASTACTOR_SANITIZE=1 $(PYTHON) -m pip install '.[test]'
	FASTACTOR_SANITIZE=1 LD_PRELOAD=$(LIBASAN) ASAN_OPTIONS=detect_leaks=0 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(PYTHON) -m pytest tests -p no:cacheprovider
	$(PYTHON) -m pip install .

# The C log alone, from threads, under ThreadSanitizer, then ASan + LeakSanitizer + UBSan.
tsan:
	mkdir -p build
	gcc -std=gnu11 -Wall -Wextra -Werror -O1 -g -fsanitize=thread -Icsrc \
		tests/c/wal_stress.c csrc/wal.c -o build/wal_stress_tsan -pthread
	rm -rf build/stress-tsan && build/wal_stress_tsan build/stress-tsan
	gcc -std=gnu11 -Wall -Wextra -Werror -O1 -g -fsanitize=address,undefined -Icsrc \
		tests/c/wal_stress.c csrc/wal.c -o build/wal_stress_asan -pthread
	rm -rf build/stress-asan && ASAN_OPTIONS=detect_leaks=1 build/wal_stress_asan build/stress-asan

test:
	$(PYTHON) -m pip install '.[test]' && $(PYTHON) -m pytest

bench:
	$(PYTHON) benchmarks/bench_wal.py
	$(PYTHON) benchmarks/bench_dispatch.py
	$(PYTHON) benchmarks/bench_alarms.py

# Each fuzzer for FUZZ_SECONDS (or FUZZ_RUNS executions), new inputs kept under build/fuzz.
FUZZ_SECONDS ?= 300
FUZZ_RUNS ?= -1
fuzz:
	for t in wal http codec; do \
		mkdir -p build/fuzz/$$t && \
		$(PYTHON) tests/fuzz/fuzz_$$t.py build/fuzz/$$t tests/fuzz/corpus/$$t \
			-max_total_time=$(FUZZ_SECONDS) -runs=$(FUZZ_RUNS) -print_final_stats=1 \
			-artifact_prefix=build/fuzz/$$t- \
			|| exit 1; \
	done

# The power-loss simulation (RELIABILITY.md).
CRASHES ?= 10000
powerloss:
	$(PYTHON) tests/reliability/powerloss.py --crashes $(CRASHES) --data build/powerloss

lint:
	$(PYTHON) -m ruff check src tests benchmarks examples
	$(PYTHON) -m ruff format --check src tests benchmarks examples
	$(PYTHON) -m mypy src/fastactor

clean:
	rm -rf build dist src/*.egg-info src/fastactor/_core.c .bench-data .pytest_cache
