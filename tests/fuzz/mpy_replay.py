# Replays a fuzz corpus through a node target under the MicroPython unix port (never CPython):
#
#   MICROPYPATH=tests/fuzz:.frozen micropython mpy_replay.py TARGET CORPUS_DIR WORKDIR
#
# The node's code is the firmware frozen into the image build, as on a node with the meterlink
# image. One line per violation, "FAIL <file> <exception>" and its traceback, then
# "replayed N files, M failed"; exit 1 if any failed. tests/test_fuzz_corpus.py runs one of
# these per node target.
import os
import sys


def main(argv):
    if len(argv) != 4:
        print("usage: mpy_replay.py TARGET CORPUS_DIR WORKDIR")
        sys.exit(2)
    target, corpus, workdir = argv[1], argv[2], argv[3]
    if not corpus.startswith("/"):
        corpus = os.getcwd() + "/" + corpus  # setup() changes the working folder
    names = sorted(n for n in os.listdir(corpus) if not n.startswith("."))
    import node_targets

    node_targets.setup(workdir)
    fn = node_targets.TARGETS[target]
    failed = 0
    for name in names:
        with open(corpus + "/" + name, "rb") as f:
            data = f.read()
        try:
            fn(data)
        except Exception as exc:  # noqa: BLE001 - every escape is a contract violation
            failed += 1
            print("FAIL", name, repr(exc))
            sys.print_exception(exc)
    print("replayed %d files, %d failed" % (len(names), failed))
    sys.exit(1 if failed else 0)


main(sys.argv)
