"""Celery's examples in ``examples/celery/`` (first steps, next steps, ``app/myapp.py``,
Django): each is Celery's file but for its import line (and the ``rpc://`` or SQLAlchemy
result backend wiretask does not have), and runs as its docstring or guide says, on
RabbitMQ as Celery's does, with a real worker process started by the command line, while
another process makes the guide's calls."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(180)]

# The test's servers, given to each process the way a user would override the example's
# URLs (which name servers on the default ports): the worker on its command line, the
# calling process through these variables, set on the app after import.
BROKER, BACKEND = "EXAMPLE_BROKER", "EXAMPLE_BACKEND"
OVERRIDE = (f"app.conf.broker_url = os.environ['{BROKER}']\n"
            f"app.conf.result_backend = os.environ['{BACKEND}']")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "celery"
SRC = ROOT / "src"

#: What the port changed, line by line (the port's line -> Celery's line), and the sha256
#: of Celery's file (celery/celery, the commit that last changed it).
PORTS = {
    "app/myapp.py": (
        {"from wiretask import App as Celery\n": "from celery import Celery\n"},
        # 89db86304f57ec1cfbeffc0c2764b2cf97c83545
        "f25a548e5dde142052011009ad4d9f7608331aa6bab9257bb72b85a1e0d9deb7",
    ),
    "next-steps/proj/celery.py": (
        {"from wiretask import App as Celery\n": "from celery import Celery\n",
         # wiretask has no rpc:// result backend.
         "             backend='redis://localhost:6379/0',\n": "             backend='rpc://',\n"},
        # 84951b1441ef242c75fe48e2100783b3081487c0
        "d8c128fa7716a45ae2c0713dbfcd70a32e53393d70583b475c0b281fc7fdc5c0",
    ),
    "next-steps/proj/tasks.py": (
        {},  # 5b86b35c81ea5a1fbfd439861f4fee6813148d16
        "6d32a0469b42f5ec39353e449da77dffd19bf7894920beb6904e3dfa9184ce33",
    ),
    "next-steps/proj/__init__.py": (
        {},  # empty, as Celery's
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
}

#: The tutorial's ``tasks.py`` with its Redis result backend
#: (docs/getting-started/first-steps-with-celery.rst, "Keeping Results").
FIRST_STEPS = """from celery import Celery

app = Celery('tasks', backend='redis://localhost', broker='pyamqp://')

@app.task
def add(x, y):
    return x + y
"""
FIRST_STEPS_PORT = {"from wiretask import App as Celery\n": "from celery import Celery\n"}


def _unported(path: Path, port: dict[str, str]) -> str:
    lines = path.read_text().splitlines(keepends=True)
    assert sum(line in port for line in lines) == len(port), f"{path}: a ported line moved"
    return "".join(port.get(line, line) for line in lines)


@pytest.mark.parametrize("name", sorted(PORTS))
def test_each_port_changes_only_the_import_line_and_the_urls(name: str) -> None:
    port, sha256 = PORTS[name]
    original = _unported(EXAMPLES / name, port)
    assert hashlib.sha256(original.encode()).hexdigest() == sha256


def test_the_first_steps_port_changes_only_the_import_line() -> None:
    assert _unported(EXAMPLES / "first-steps" / "tasks.py", FIRST_STEPS_PORT) == FIRST_STEPS


# -- running them -----------------------------------------------------------------------


class Running:
    """A program of the example (a worker), stopped with SIGTERM at the end."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.out = self.err = ""

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.out, self.err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.out, self.err = self.process.communicate()
        return self.process.returncode


class Example:
    """A copy of one example in a temporary directory. The worker gets the test's
    servers with ``--broker``/``--backend``, the calling process through ``BROKER`` and
    ``BACKEND`` (``OVERRIDE``): the example's own URLs name servers on default ports."""

    def __init__(self, name: str, where: Path) -> None:
        self.dir = where / name
        shutil.copytree(EXAMPLES / name, self.dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WIRETASK_")}
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
        env["XDG_DATA_HOME"] = str(where / "xdg")
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env
        self.running: list[Running] = []

    def start(self, *argv: str) -> Running:
        program = Running([sys.executable, *argv], self.dir, self.env)
        self.running.append(program)
        return program

    def call(self, broker: str, backend: str, code: str) -> dict[str, object]:
        """Run the guide's calls (``code`` sets ``out``) in a fresh interpreter."""
        script = (
            "import json, os\n"
            f"{code}\n"
            "print(json.dumps(out))\n"
        )
        done = subprocess.run([sys.executable, "-c", script], cwd=self.dir,
                              env={**self.env, BROKER: broker, BACKEND: backend},
                              capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
        return result

    def stop(self) -> None:
        for program in self.running:
            program.stop()


@pytest.fixture
def examples(tmp_path: Path) -> Iterator[list[Example]]:
    made: list[Example] = []
    yield made
    for example in made:
        example.stop()


def test_app_myapp_runs_the_three_ways_its_docstring_says(
    examples: list[Example], tmp_path: Path, amqp_url: str, redis_url: str
) -> None:
    # python myapp.py on RabbitMQ (results on Redis: the example has no backend); wiretask
    # -A myapp and -A myapp:app on SQLite files (each worker its own broker, so each call
    # is answered by the way under test).
    ways = {
        "script": (["myapp.py"], amqp_url, redis_url),
        "module": (["-m", "wiretask", "-A", "myapp"], None, None),
        "attribute": (["-m", "wiretask", "-A", "myapp:app"], None, None),
    }
    workers = {}
    urls = {}
    for way, (argv, broker, backend) in ways.items():
        example = Example("app", tmp_path / way)
        examples.append(example)
        sqlite = f"sqlite:///{example.dir / 'broker.db'}"
        urls[way] = (broker or sqlite, backend or sqlite)
        workers[way] = (example, example.start(*argv, "worker", "-l", "INFO",
                                               "--broker", urls[way][0],
                                               "--backend", urls[way][1]))
    calls = "\n".join((
        "from myapp import add, app",
        OVERRIDE,
        "out = {'get': add.delay(16, 16).get(timeout=60)}",  # add sleeps 10 s
    ))
    # The three calls at once: each sleeps its 10 s in its own worker.
    with ThreadPoolExecutor(len(workers)) as pool:
        answers = {way: pool.submit(example.call, *urls[way], calls)
                   for way, (example, _) in workers.items()}
        for way, answer in answers.items():
            assert answer.result() == {"get": 32}, way
    for way, (_, worker) in workers.items():
        assert worker.stop() == 0, worker.err
        assert "myapp.add[" in worker.err and "succeeded" in worker.err, way


def test_first_steps_as_the_tutorial_says(
    examples: list[Example], tmp_path: Path, amqp_url: str, redis_url: str
) -> None:
    example = Example("first-steps", tmp_path)
    examples.append(example)
    worker = example.start("-m", "wiretask", "-A", "tasks", "worker", "--loglevel=INFO",
                           "--broker", amqp_url, "--backend", redis_url)
    out = example.call(amqp_url, redis_url, "\n".join((
        "from tasks import add, app",
        OVERRIDE,
        "add.delay(4, 4)",
        "result = add.delay(4, 4)",
        "out = {'ready': result.ready() in (True, False),",
        "       'get': result.get(timeout=30),",
        "       'propagate': result.get(propagate=False),",
        "       'traceback': result.traceback}",
    )))
    assert out == {"ready": True, "get": 8, "propagate": 8, "traceback": None}
    assert worker.stop() == 0, worker.err
    assert worker.err.count("tasks.add[") >= 2


NEXT_STEPS_CALLS = """
from proj.celery import app
from proj.tasks import add, mul, xsum
from wiretask.errors import ArgumentsError

app.conf.broker_url = os.environ['EXAMPLE_BROKER']
app.conf.result_backend = os.environ['EXAMPLE_BACKEND']
out = {}
out['delay'] = add.delay(2, 2).get(timeout=30)
out['apply_async'] = add.apply_async((2, 2)).get(timeout=30)
lopri = add.apply_async((2, 2), queue='lopri', countdown=10)
out['direct'] = add(2, 2)
res = add.delay(2, 2)
out['get'] = res.get(timeout=30)
out['id'] = len(res.id) == 36 and res.id.count('-') == 4
res = add.delay(2, '2')
try:
    res.get(timeout=30)
except TypeError as exc:
    out['raised'] = type(exc).__name__
out['propagate_false'] = type(res.get(propagate=False)).__name__
out['failed'], out['successful'], out['state'] = res.failed(), res.successful(), res.state
out['unknown'] = app.AsyncResult('this-id-does-not-exist').state
out['signature'] = add.signature((2, 2), countdown=10).options['countdown']
s1 = add.s(2, 2)
out['s1'] = s1.delay().get(timeout=30)
s2 = add.s(2)
out['s2'] = s2.delay(8).get(timeout=30)
s3 = add.s(2, 2, debug=True)
try:
    s3.delay(debug=False)   # add has no debug argument: refused before sending, as Celery
except TypeError as exc:
    out['s3'] = type(exc).__name__
out['chain'] = (add.s(4, 4) | mul.s(8))().get(timeout=30)
# The guide's canvas ("from celery import group" becomes "from wiretask import group").
from wiretask import chain, chord, group
out['group'] = group(add.s(i, i) for i in range(10))().get(timeout=30)
g = group(add.s(i) for i in range(10))
out['partial_group'] = g(10).get(timeout=30)
out['chain_call'] = chain(add.s(4, 4) | mul.s(8))().get(timeout=30)
g = chain(add.s(4) | mul.s(8))
out['partial_chain'] = g(4).get(timeout=30)
out['chord'] = chord((add.s(i, i) for i in range(10)), xsum.s())().get(timeout=30)
out['group_then'] = (group(add.s(i, i) for i in range(10)) | xsum.s())().get(timeout=30)
out['hipri'] = add.apply_async((2, 2), queue='hipri').get(timeout=30)
out['xsum'] = xsum.delay([1, 2, 3]).get(timeout=30)
out['lopri'] = lopri.state
out['lopri_id'] = lopri.id
import redis
ttl = redis.Redis.from_url(app.conf.result_backend).ttl('celery-task-meta-' + res.id)
out['expires'] = 3500 < ttl <= 3600
"""

def test_next_steps_as_the_guide_says(
    examples: list[Example], tmp_path: Path, amqp_url: str, redis_url: str
) -> None:
    example = Example("next-steps", tmp_path)
    examples.append(example)
    # The guide's worker for the priority queue: celery -A proj worker -Q hipri,celery
    worker = example.start("-m", "wiretask", "-A", "proj", "worker", "-l", "INFO",
                           "-Q", "hipri,celery", "--broker", amqp_url,
                           "--backend", redis_url)
    out = example.call(amqp_url, redis_url, NEXT_STEPS_CALLS)
    lopri_id = out.pop("lopri_id")
    assert out == {
        "delay": 4, "apply_async": 4, "direct": 4, "get": 4, "id": True,
        "raised": "TypeError", "propagate_false": "TypeError",
        "failed": True, "successful": False, "state": "FAILURE", "unknown": "PENDING",
        "signature": 10, "s1": 4, "s2": 10, "s3": "ArgumentsError", "chain": 64,
        "group": [0, 2, 4, 6, 8, 10, 12, 14, 16, 18],
        "partial_group": [10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
        "chain_call": 64, "partial_chain": 64, "chord": 90, "group_then": 90,
        "hipri": 4, "xsum": 6, "lopri": "PENDING", "expires": True,
    }
    assert worker.stop() == 0, worker.err
    # Sent to lopri, which this worker does not consume: it never ran.
    assert isinstance(lopri_id, str) and lopri_id not in worker.err
    assert "proj.tasks.xsum[" in worker.err



#: The Django example's ported lines, by file; the rest of its 14 files are Celery's.
DJANGO_PORT = {
    "proj/celery.py": {"from wiretask import App as Celery\n": "from celery import Celery\n"},
    "demoapp/tasks.py": {"from wiretask import shared_task\n": "from celery import shared_task\n"},
    "proj/settings.py": {
        # wiretask's SQLite result store instead of Celery's SQLAlchemy one (db+).
        "CELERY_RESULT_BACKEND = 'sqlite:///results.sqlite'\n":
            "CELERY_RESULT_BACKEND = 'db+sqlite:///results.sqlite'\n",
    },
}
#: sha256 over Celery's examples/django (each file's path, NUL, content, NUL, in path
#: order; celery/celery a0e6996b68c2a55c319e7589485544d845306b99).
DJANGO_SHA256 = "09e46a320ba4cb5a7f13d3d74dffb216833a82bd5fde6f08eb4b45230ea279a2"


def test_the_django_port_changes_only_the_import_lines_and_the_urls() -> None:
    root = EXAMPLES / "django"
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert len(files) == 14
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix()
        text = _unported(path, DJANGO_PORT.get(name, {}))
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    assert digest.hexdigest() == DJANGO_SHA256


DJANGO_CALLS = """
from proj.celery import app, debug_task
from demoapp.models import Widget
from demoapp.tasks import add, count_widgets, mul, rename_widget, xsum

app.conf.broker_url = os.environ['EXAMPLE_BROKER']
app.conf.result_backend = os.environ['EXAMPLE_BACKEND']
out = {}
out['delay_on_commit'] = add.delay_on_commit(2, 3)   # None, as Celery's
out['add'] = add.delay(2, 3).get(timeout=30)
out['mul'] = mul.delay(4, 5).get(timeout=30)
out['xsum'] = xsum.delay([1, 2, 3]).get(timeout=30)
widget = Widget.objects.create(name='old')
out['count'] = count_widgets.delay().get(timeout=30)
rename_widget.delay(widget.id, 'new').get(timeout=30)
widget.refresh_from_db()
out['renamed'] = widget.name
out['debug'] = debug_task.delay().id
"""


def test_the_django_example_as_its_readme_says(
    examples: list[Example], tmp_path: Path, amqp_url: str, redis_url: str
) -> None:
    pytest.importorskip("django", reason="the test extra installs Django")
    example = Example("django", tmp_path)
    examples.append(example)
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"],
                             cwd=example.dir, env=example.env, capture_output=True,
                             text=True, timeout=120, check=False)
    assert migrate.returncode == 0, migrate.stderr
    # The README's worker: celery -A proj worker -l INFO (the app in proj/celery.py,
    # configured from Django's settings, its tasks found in the installed apps).
    worker = example.start("-m", "wiretask", "-A", "proj", "worker", "-l", "INFO",
                           "--broker", amqp_url, "--backend", redis_url)
    # The README's shell: python ./manage.py shell.
    shell = subprocess.run([sys.executable, "manage.py", "shell", "-c",
                            "import json, os\n" + DJANGO_CALLS + "\nprint(json.dumps(out))"],
                           cwd=example.dir,
                           env={**example.env, BROKER: amqp_url, BACKEND: redis_url},
                           capture_output=True, text=True, timeout=120, check=False)
    assert shell.returncode == 0, shell.stdout + shell.stderr
    out = json.loads(shell.stdout.splitlines()[-1])
    debug_id = out.pop("debug")
    assert out == {"delay_on_commit": None, "add": 5, "mul": 20, "xsum": 6, "count": 1,
                   "renamed": "new"}
    assert worker.stop() == 0, worker.err
    assert f"Request: Request(id='{debug_id}'" in worker.out  # debug_task prints it
    assert worker.err.count("demoapp.tasks.add[") >= 3  # delay_on_commit's ran too
