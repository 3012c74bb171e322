# The node's small file helpers: atomic writes, chunked copy and compare (no allocation the
# size of a file), on the unix port's real filesystem.
import files


def test_copy_and_same_in_chunks():
    data = "".join("line %d of a config file\n" % i for i in range(100))  # > 128-byte chunks
    files.write_text("a.json", data)
    assert not files.same("a.json", "b.json"), "a missing file is never the same"
    files.copy("a.json", "b.json")
    assert files.read_text("b.json") == data
    assert files.same("a.json", "b.json")
    files.write_text("b.json", data[:-1] + "X")
    assert not files.same("a.json", "b.json"), "the last byte differs"
    files.write_text("b.json", data + "more")
    assert not files.same("a.json", "b.json"), "one is longer"


def test_exists_bump_remove():
    files.remove("n.dat")
    assert not files.exists("n.dat") and files.read_int("n.dat") == 0
    assert files.bump("n.dat") == 1 and files.bump("n.dat") == 2
    assert files.exists("n.dat")
    files.remove("n.dat")
    assert not files.exists("n.dat")
