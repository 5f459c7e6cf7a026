"""What `grokscale reproduce` expects before it trains: bitwise equality on the machine facts the
run recorded, a stated tolerance on another machine or a GPU."""

from orchestrator.report.reproduce import TOLERANCE, compare, expectation
from trainers.machine import bitwise_comparable, facts

HERE = facts(1)


def test_the_same_machine_expects_bits():
    tolerance, why = expectation(dict(HERE), HERE, "cpu")
    assert tolerance is None and "bitwise equality expected" in why


def test_another_cpu_or_blas_expects_a_tolerance_and_names_what_differs():
    other = {**HERE, "cpu": "AMD EPYC 7B13", "isa": ["avx", "avx2", "fma"], "blas": "OpenBLAS"}
    tolerance, why = expectation(other, HERE, "cpu")
    assert tolerance == TOLERANCE and "AMD EPYC 7B13" in why and "blas" in why
    assert len(bitwise_comparable(other, HERE)) == 3


def test_a_gpu_run_and_an_old_record():
    assert expectation(dict(HERE), HERE, "cuda:0")[0] == TOLERANCE
    tolerance, why = expectation({}, HERE, None)
    assert tolerance is None and "no machine facts" in why


def test_compare_within_tolerance_only_when_asked():
    recorded, new = [(100, 1.0), (200, 0.5)], [(100, 1.0), (200, 0.5 * (1 + 1e-6))]
    assert not compare("val_loss", recorded, new).match
    assert compare("val_loss", recorded, new, TOLERANCE).match
    assert not compare("val_loss", recorded, [(100, 1.0), (200, 0.6)], TOLERANCE).match
    assert compare("tokens_per_s", recorded, [(100, 9.0), (200, 9.0)]).match  # a speed: not compared
