# The developer's entry points. `make demo` and `make test` are the README's two commands.
PY := .venv/bin/python
JOBS ?= 2

.PHONY: setup demo test test-cpp test-python sanitize asan tsan bench format lint clean

setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m jobforge demo

test: setup test-cpp test-python

test-cpp:
	cmake -S . -B build/cpp -G Ninja -DJOBFORGE_WERROR=ON >/dev/null
	cmake --build build/cpp -j $(JOBS)
	ctest --test-dir build/cpp --output-on-failure -j $(JOBS)

test-python:
	$(PY) -m pytest tests/python -q

# The C++ engine tests under AddressSanitizer+UBSan, then ThreadSanitizer.
sanitize: asan tsan

asan:
	cmake -S . -B build/asan -G Ninja -DJOBFORGE_SANITIZE=address -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build build/asan -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir build/asan --output-on-failure -j $(JOBS)

tsan:
	cmake -S . -B build/tsan -G Ninja -DJOBFORGE_SANITIZE=thread -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build build/tsan -j $(JOBS)
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  setarch $$(uname -m) -R ctest --test-dir build/tsan --output-on-failure -j $(JOBS)

bench: setup
	$(PY) -m pip install -q -e '.[bench]' --no-build-isolation
	$(PY) benchmarks/run.py --quick

format:
	clang-format -i cpp/include/jobforge/*.hpp cpp/src/*.cpp cpp/src/*/*.cpp cpp/src/*/*.hpp bindings/*.cpp tests/cpp/*.cpp
	$(PY) -m ruff format python tests benchmarks

lint:
	$(PY) -m ruff check python tests benchmarks
	$(PY) -m ruff format --check python tests benchmarks

clean:
	rm -rf build .venv
