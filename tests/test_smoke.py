def test_boots_and_answers(board):
    info = board.request("info")
    assert info["board"] == "unix"
    p = board.pop3()
    assert p.getwelcome().startswith(b"+OK")
    p.user("alice")
    p.pass_("wonderland")
    assert p.stat() == (0, 0)
    p.quit()
    s = board.smtp()
    s.sendmail("bob@example.org", ["alice@pocketpost.local"], "Subject: hi\r\n\r\nhello\r\n.dot\r\n")
    s.quit()
    p = board.pop3()
    p.user("alice")
    p.pass_("wonderland")
    resp, lines, octets = p.retr(1)
    print(lines)
    assert lines[-2:] == [b"hello", b".dot"]
    p.quit()
