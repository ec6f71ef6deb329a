"""Worker pools for simulator rollouts.

MuJoCo's GL contexts do not survive ``fork``, so workers are started with the
'spawn' method; everything sent to them must be picklable (module-level
functions, ``functools.partial``). ``num_workers <= 1`` runs jobs inline in the
calling process through the same interface, which tests and debuggers prefer.
"""

import concurrent.futures
import contextlib
import multiprocessing


class InlineExecutor(concurrent.futures.Executor):
  """Runs each job at ``submit`` time in this process; same API as a pool."""

  def __init__(self, initializer=None, initargs=()):
    if initializer is not None:
      initializer(*initargs)

  def submit(self, fn, /, *args, **kwargs):
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001  (re-raised by future.result()).
      future.set_exception(e)
    return future


def executor(num_workers: int, initializer=None, initargs=()) -> concurrent.futures.Executor:
  if num_workers <= 1:
    return InlineExecutor(initializer, initargs)
  return concurrent.futures.ProcessPoolExecutor(
      max_workers=num_workers, mp_context=multiprocessing.get_context("spawn"),
      initializer=initializer, initargs=initargs)


def completed(pool: concurrent.futures.Executor, fn, jobs):
  """Yields ``fn(*job)`` for each job as it finishes: lazily in-process for the
  inline executor (so progress shows as it happens), in completion order for a pool."""
  if isinstance(pool, InlineExecutor):
    for job in jobs:
      yield fn(*job)
    return
  futures = [pool.submit(fn, *job) for job in jobs]
  for future in concurrent.futures.as_completed(futures):
    yield future.result()


@contextlib.contextmanager
def cancel_on_error(pool: concurrent.futures.Executor):
  """On an exception, drops queued jobs instead of running them all before re-raising."""
  try:
    yield pool
  except BaseException:
    pool.shutdown(wait=False, cancel_futures=True)
    raise
