"""Row reads of large .npy files: the same values as numpy's loader, and one-line errors for a damaged file."""
import pickle

import numpy as np
import pytest

from dtgnet.errors import DataError
from dtgnet.io import NpyRows


def test_rows_read_like_numpy_and_survive_pickling(tmp_path):
    table = np.arange(7 * 3 * 2, dtype=np.float16).reshape(7, 3, 2)
    np.save(tmp_path / "t.npy", table)
    rows = NpyRows(tmp_path / "t.npy", "write it again")
    assert rows.num_rows == 7 and rows.row_shape == (3, 2) and rows.dtype == np.float16
    np.testing.assert_array_equal(rows.span(2, 4), table[2:6])
    np.testing.assert_array_equal(rows.take(np.array([6, 0, 3, 3])), table[[6, 0, 3, 3]])
    worker = pickle.loads(pickle.dumps(rows))  # a spawned DataLoader worker opens the file itself
    assert worker.fd == -1
    np.testing.assert_array_equal(worker.take(np.array([1])), table[[1]])


def test_a_damaged_file_is_one_line_naming_it(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((10, 4), np.float32))
    rows = NpyRows(tmp_path / "t.npy", "write it again")
    with pytest.raises(DataError, match=r"t\.npy: truncated \(row 10 is past its end\); write it again"):
        rows.span(8, 3)
    (tmp_path / "bad.npy").write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match=r"bad\.npy: not a readable \.npy .*; write it again"):
        NpyRows(tmp_path / "bad.npy", "write it again")


def test_an_error_raised_in_a_worker_is_given_back_as_raised():
    """DataLoader re-raises a worker's exception as 'Caught X in DataLoader worker process N.' plus the
    worker's traceback; the user reads the message it was raised with."""
    from torch.utils.data import DataLoader, Dataset

    from dtgnet.errors import TooManyBadItems, raised_in_worker

    class Failing(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise TooManyBadItems("11 videos in a row failed to load; last: v/x.mp4")

    with pytest.raises(TooManyBadItems) as caught:
        next(iter(DataLoader(Failing(), num_workers=1)))
    assert str(caught.value).startswith("Caught TooManyBadItems in DataLoader worker process 0")
    again = raised_in_worker(caught.value)
    assert type(again) is TooManyBadItems and str(again) == "11 videos in a row failed to load; last: v/x.mp4"
    plain = TooManyBadItems("as raised")
    assert raised_in_worker(plain) is plain
