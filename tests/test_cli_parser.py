"""Command-line mistakes get one line naming the option (and a suggestion), never argparse's usage dump."""
import pytest

import train_network
from library.errors import run_cli
from library.sampling import cli as gen_img_cli


@pytest.mark.parametrize("main,argv,message", [
    (train_network.main, ["--learnig_rate", "1e-4"], "error: unknown option --learnig_rate; did you mean "
                                                      "--learning_rate?"),
    (train_network.main, ["--loss_type", "l3"], "error: argument --loss_type: invalid choice: 'l3' (choose from "
                                                "'l1', 'l2', 'huber', 'smooth_l1')"),
    (train_network.main, ["--network_dim", "abc"], "error: argument --network_dim: invalid int value: 'abc'"),
    (train_network.main, ["stray"], "error: unexpected value(s) stray: every value follows the option it "
                                    "belongs to"),
    (gen_img_cli.main, ["--ckpt", "m.safetensors", "--prompt", "a", "--stpes", "3", "--zzz"],
     "error: unknown option --stpes; did you mean --steps?; unknown option --zzz"),
])
def test_one_line_error_without_usage(main, argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli(main, argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == message and "usage:" not in err
