from ftharness.report.pages import LONG_TEXT, html_table


def test_a_long_cell_gets_a_width_of_its_own_and_a_short_one_does_not():
    """A pruned trial's reason (~100 characters) squeezed to a word's width made each row ten lines tall."""
    reason = "pruned at step 3 (train_loss 0.4693; not among the best 1/4 of the 11 trials that reached step 3)"
    table = html_table([{"state": "pruned", "reason": reason}, {"state": "completed", "reason": ""}])
    assert len(reason) > LONG_TEXT
    assert f'<td>pruned</td><td class="long">{reason}</td>' in table
    assert "<td>completed</td><td></td>" in table and "<th>reason</th>" in table
