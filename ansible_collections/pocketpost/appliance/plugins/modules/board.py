#!/usr/bin/python
# Copyright: pocketpost developers
# MIT License (see the pocketpost repository)
"""The Ansible module pocketpost.appliance.board: a pocketpost board in the state the task
gives, through the host library of the `pocketpost` command (pocketpost_host.apply)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: board
short_description: Users, domains, limits, Wi-Fi, TLS and relay of a pocketpost mail appliance
description:
  - Reads the state of a pocketpost board over its serial console (or the console link of an
    emulated board, C(pocketpost sim)), compares it with the task's parameters and changes only
    what differs, as C(pocketpost apply) does for an inventory file.
  - Runs on the controller, next to the board's USB cable, so use a local connection
    (C(ansible_connection=local)) and the Python that has pocketpost installed
    (C(ansible_python_interpreter)).
  - Passwords are never read back from a board; the board compares a hash with its own instead.
    A user's password is set when the user is created, when its APOP flag changes, and with
    O(users[].update_password=always) whenever the board's is not the task's. The Wi-Fi password,
    which cannot be compared, is set on every run with O(wifi.update_password=always).
  - The relay's password (the smarthost's) is handled like the Wi-Fi password; its CA
    certificates are compared with the board's by their SHA-256 fingerprints and installed only
    when they differ.
  - The TLS certificate is compared with the board's by its SHA-256 fingerprint and installed
    only when it differs. The key never leaves a board, but it is checked to belong to the
    certificate before anything is sent, so a new key always comes with a new certificate.
version_added: "0.1.0"
author:
  - pocketpost developers
requirements:
  - pocketpost (the Python package, which brings pyserial and PyYAML)
options:
  port:
    description:
      - The board's console, a serial device such as V(/dev/ttyUSB0) or a pyserial URL.
      - Exactly one of O(port) and O(sim).
    type: str
  sim:
    description:
      - The data folder of an emulated board (C(pocketpost sim --data DIR)); its console is
        V(DIR/console). Use an absolute path, such as V({{ playbook_dir }}/sims/a).
    type: path
  board:
    description:
      - The board type (a board definition, such as V(unix)). When given, a board of another
        type fails the task before anything is changed.
    type: str
  name:
    description: The board's name in messages (default the port).
    type: str
  timeout:
    description: Seconds to wait for each answer of the board.
    type: float
    default: 5.0
  host:
    description:
      - An address of the board; when given, the module checks that its POP3 and SMTP servers
        answer there (on the ports the board reports).
    type: str
  hostname:
    description: The board's host name (greeting, C(Received:)); takes effect after a reboot.
    type: str
  domains:
    description: The local mail domains (1 to 8).
    type: list
    elements: str
  postmaster:
    description: The user that receives mail for C(postmaster@).
    type: str
  listen:
    description: Where the servers listen; takes effect after a reboot.
    type: dict
    suboptions:
      bind:
        description: IPv4 address to listen on.
        type: str
      pop3_port:
        description: POP3 port.
        type: int
      smtp_port:
        description: SMTP port.
        type: int
  limits:
    description: Limits and time-outs (the firmware's configuration keys of the same names).
    type: dict
    suboptions:
      max_clients:
        description: Concurrent clients, 1-12 (after a reboot).
        type: int
      max_message_size:
        description: Largest message in octets.
        type: int
      max_recipients:
        description: Recipients per message, 100-1000.
        type: int
      max_bad_commands:
        description: Bad commands before a session is closed.
        type: int
      pop3_idle_timeout:
        description: Seconds.
        type: int
      smtp_timeout:
        description: Seconds.
        type: int
      auth_fail_delay_ms:
        description: Base delay of a failed login.
        type: int
      auth_max_failures:
        description: Failures after which an address is refused.
        type: int
      auth_lockout:
        description: Seconds after which an address's failures are forgotten.
        type: int
  wifi:
    description: The Wi-Fi network the board joins (after a reboot).
    type: dict
    suboptions:
      ssid:
        description: Network name.
        type: str
      password:
        description: The network's password; V("") for an open network.
        type: str
      update_password:
        description: V(on_create) sets the password only when the board has none; V(always) on every run.
        type: str
        choices: [on_create, always]
        default: on_create
  tls:
    description:
      - The board's TLS certificate and settings (the firmware's configuration keys
        C(require_tls_for_auth), C(tls_max_sessions), C(tls_handshake_timeout), C(pop3s_port),
        C(smtps_port), C(submission_port)).
    type: dict
    suboptions:
      cert:
        description:
          - The certificate file on the controller (PEM or DER), such as
            V({{ playbook_dir }}/certs/{{ inventory_hostname }}.pem). Needs O(tls.key).
        type: path
      key:
        description:
          - The certificate's key itself, unencrypted PEM, such as
            V({{ lookup('file', 'certs/board.key') }}) (the file lookup reads Vault-encrypted files
            too). Never shown, in a diff or elsewhere. Needs O(tls.cert).
        type: str
      require_for_auth:
        description: V(auto) requires TLS for logins once a certificate is installed; V(yes) always; V(no) never.
        type: str
        choices: [auto, "yes", "no"]
      max_sessions:
        description: TLS sessions at once, 0-12 (each costs an ESP32 20-36 KB of heap).
        type: int
      handshake_timeout:
        description: Seconds a TLS handshake may take, 5-300.
        type: int
      pop3s_port:
        description: POP3 over implicit TLS, 0 for off (after a reboot).
        type: int
      smtps_port:
        description: Submission over implicit TLS, 0 for off (after a reboot).
        type: int
      submission_port:
        description: Submission with STARTTLS, 0 for off (after a reboot).
        type: int
  relay:
    description:
      - The smarthost that mail for other domains is relayed through (the firmware's configuration
        keys C(relay_host), C(relay_port), C(relay_security), C(relay_user), C(relay_password),
        C(relay_sender), C(relay_networks), C(relay_queue_messages), C(relay_queue_octets),
        C(relay_rate), C(relay_lifetime), C(relay_timeout)), and the CA certificates that verify it.
    type: dict
    suboptions:
      host:
        description: The smarthost's name or IPv4 address; V("") turns relaying off.
        type: str
      port:
        description: Its port (587 with V(starttls), 465 with V(tls)).
        type: int
      security:
        description: V(starttls), V(tls) (implicit) or V(plain) (only for a smarthost on a LAN you trust).
        type: str
        choices: [starttls, tls, plain]
      user:
        description: The user name for AUTH at the smarthost; V("") for none.
        type: str
      password:
        description:
          - The password for AUTH at the smarthost (from Ansible Vault or a lookup). Never shown,
            in a diff or elsewhere; the board never reveals it, so it is set only when the board
            has none, or on every run with O(relay.update_password=always).
        type: str
      update_password:
        description: V(on_create) sets the password only when the board has none; V(always) on every run.
        type: str
        choices: [on_create, always]
        default: on_create
      sender:
        description: The envelope sender of relayed mail (the account's own address, which Gmail and Microsoft 365 require).
        type: str
      networks:
        description: IPv4 networks (CIDR) whose clients may relay without logging in.
        type: list
        elements: str
      queue_messages:
        description: Messages the queue holds at most.
        type: int
      queue_octets:
        description: Octets the queue holds at most.
        type: int
      rate:
        description: Messages a minute sent to the smarthost.
        type: int
      lifetime:
        description: Seconds before undelivered mail bounces.
        type: int
      timeout:
        description: Seconds to wait for each smarthost reply.
        type: int
      ca:
        description:
          - PEM files on the controller of the CA certificates that verify the smarthost (1 to 8
            certificates in all), converted to DER and installed as C(pocketpost relay ca install)
            does, replacing the board's, only when their SHA-256 fingerprints differ.
        type: list
        elements: path
  collect:
    description:
      - Collector accounts, each a user's mailbox at an outside provider that the board polls over
        POP3S (C(pocketpost collect add)). One is known by its user, host and login; accounts on the
        board that are not listed are left alone.
      - The password is set when the account is added or its settings change, and on every run
        with O(collect[].update_password=always); the board never reveals it.
    type: list
    elements: dict
    suboptions:
      user:
        description: The local user whose mailbox the mail goes to.
        type: str
        required: true
      host:
        description: The provider's POP3 server, e.g. C(pop.gmail.com).
        type: str
        required: true
      login:
        description: The login at the provider.
        type: str
        required: true
      password:
        description: The password at the provider (an app password for Gmail or Outlook.com).
        type: str
      update_password:
        description: V(on_create) sets the password only when the account is added or changed; V(always) on every run.
        type: str
        choices: [on_create, always]
        default: on_create
      state:
        description: Whether the account should exist.
        type: str
        choices: [present, absent]
        default: present
      port:
        description: The provider's port (default 995 with V(tls), 110 otherwise).
        type: int
      security:
        description: V(tls) (POP3S, implicit TLS), V(stls) (STLS on port 110) or V(plain) (no TLS, a LAN server only).
        type: str
        choices: [tls, stls, plain]
        default: tls
      interval:
        description: Minutes between polls (5 to 1440).
        type: int
        default: 30
      keep:
        description: Leave the messages on the provider.
        type: bool
        default: true
      delete_after:
        description: With O(collect[].keep=true), delete them from the provider this many days after the first fetch (0 never).
        type: int
        default: 0
      max_size:
        description: Leave messages larger than this many octets on the provider (0 no limit).
        type: int
        default: 0
  users:
    description: Mail users. Users on the board that are not listed are left alone unless O(users_exclusive).
    type: list
    elements: dict
    suboptions:
      name:
        description: User name (a-z 0-9 . _ -).
        type: str
        required: true
      state:
        description: Whether the user should exist.
        type: str
        choices: [present, absent]
        default: present
      password_hash:
        description: The password hash (C(pocketpost hash-password)).
        type: str
      password:
        description:
          - The password itself (from Ansible Vault or a lookup); hashed on the controller.
          - Needed for O(users[].apop=true).
        type: str
      apop:
        description: Whether the user may log in with APOP (the board then keeps the password as its APOP secret).
        type: bool
        default: false
      update_password:
        description: V(on_create) sets the password only when the user is created (or its APOP flag changes), and reports a different one on the board; V(always) also sets it whenever the board's differs.
        type: str
        choices: [on_create, always]
        default: on_create
      purge:
        description: With O(users[].state=absent), delete the user's mailbox too (default O(purge)).
        type: bool
  users_exclusive:
    description: Remove the users on the board that O(users) does not list.
    type: bool
    default: false
  purge:
    description: Delete the mailboxes of the users this task removes (otherwise they stay on the SD card).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Changes to O(hostname), O(listen), O(limits.max_clients), O(wifi) and the TLS ports take
    effect after the board restarts; the result's RV(reboot_required) says so. So does a
    certificate (or relay CA certificates) the board had no heap to load at once.
"""

EXAMPLES = r"""
- name: Two emulated boards with the same users
  hosts: pocketpost_boards
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Users, domains and limits
      pocketpost.appliance.board:
        sim: "{{ playbook_dir }}/sims/{{ inventory_hostname }}"
        board: unix
        domains: [lab.example]
        limits:
          max_message_size: 5242880
        users:
          - name: alice
            password_hash: "{{ alice_hash }}"
          - name: bob
            password: "{{ lookup('env', 'BOB_PASSWORD') }}"
            apop: true

- name: Each board's certificate, logins only over TLS
  hosts: pocketpost_boards
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: TLS
      pocketpost.appliance.board:
        sim: "{{ playbook_dir }}/sims/{{ inventory_hostname }}"
        tls:
          cert: "{{ playbook_dir }}/certs/{{ inventory_hostname }}.pem"
          key: "{{ lookup('file', playbook_dir ~ '/certs/' ~ inventory_hostname ~ '.key') }}"
          require_for_auth: auto
"""

RETURN = r"""
items:
  description: Every part of the board's state the task manages, with what was done.
  returned: always
  type: list
  elements: dict
  contains:
    item:
      description: The part, such as V(domains) or V(user alice).
      type: str
    status:
      description: V(ok), V(changed) (in check mode, would change) or V(failed).
      type: str
    message:
      description: What was done or why it failed.
      type: str
reboot_required:
  description: Whether a changed setting takes effect only after the board restarts.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from pocketpost_host.apply import CHANGED, FAILED, apply_board
    from pocketpost_host.inventory import UPDATE_PASSWORD, USER_STATES, InventoryError, board_from_params
except ImportError:
    HAS_POCKETPOST = False
    UPDATE_PASSWORD, USER_STATES = ("on_create", "always"), ("present", "absent")
else:
    HAS_POCKETPOST = True

LIMITS = (
    "max_clients", "max_message_size", "max_recipients", "max_bad_commands", "pop3_idle_timeout",
    "smtp_timeout", "auth_fail_delay_ms", "auth_max_failures", "auth_lockout",
)
TLS_AUTH = ("auto", "yes", "no")
RELAY_SECURITY = ("starttls", "tls", "plain")


def argument_spec():
    return dict(
        port=dict(type="str"),
        sim=dict(type="path"),
        board=dict(type="str"),
        name=dict(type="str"),
        timeout=dict(type="float", default=5.0),
        host=dict(type="str"),
        hostname=dict(type="str"),
        domains=dict(type="list", elements="str"),
        postmaster=dict(type="str"),
        listen=dict(type="dict", options=dict(bind=dict(type="str"), pop3_port=dict(type="int"), smtp_port=dict(type="int"))),
        limits=dict(type="dict", options={key: dict(type="int") for key in LIMITS}),
        wifi=dict(
            type="dict",
            options=dict(
                ssid=dict(type="str"),
                password=dict(type="str", no_log=True),
                update_password=dict(type="str", choices=list(UPDATE_PASSWORD), default="on_create", no_log=False),
            ),
        ),
        tls=dict(
            type="dict",
            options=dict(
                cert=dict(type="path"),
                key=dict(type="str", no_log=True),
                require_for_auth=dict(type="str", choices=list(TLS_AUTH)),
                max_sessions=dict(type="int"),
                handshake_timeout=dict(type="int"),
                pop3s_port=dict(type="int"),
                smtps_port=dict(type="int"),
                submission_port=dict(type="int"),
            ),
            required_together=[("cert", "key")],
        ),
        relay=dict(
            type="dict",
            options=dict(
                host=dict(type="str"),
                port=dict(type="int"),
                security=dict(type="str", choices=list(RELAY_SECURITY)),
                user=dict(type="str"),
                password=dict(type="str", no_log=True),
                update_password=dict(type="str", choices=list(UPDATE_PASSWORD), default="on_create", no_log=False),
                sender=dict(type="str"),
                networks=dict(type="list", elements="str"),
                queue_messages=dict(type="int"),
                queue_octets=dict(type="int"),
                rate=dict(type="int"),
                lifetime=dict(type="int"),
                timeout=dict(type="int"),
                ca=dict(type="list", elements="path"),
            ),
        ),
        users=dict(
            type="list",
            elements="dict",
            options=dict(
                name=dict(type="str", required=True),
                state=dict(type="str", choices=list(USER_STATES), default="present"),
                password_hash=dict(type="str", no_log=True),
                password=dict(type="str", no_log=True),
                apop=dict(type="bool", default=False),
                update_password=dict(type="str", choices=list(UPDATE_PASSWORD), default="on_create", no_log=False),
                purge=dict(type="bool"),
            ),
        ),
        users_exclusive=dict(type="bool", default=False),
        purge=dict(type="bool", default=False),
        collect=dict(
            type="list",
            elements="dict",
            options=dict(
                user=dict(type="str", required=True),
                host=dict(type="str", required=True),
                login=dict(type="str", required=True),
                password=dict(type="str", no_log=True),
                update_password=dict(type="str", choices=list(UPDATE_PASSWORD), default="on_create", no_log=False),
                state=dict(type="str", choices=list(USER_STATES), default="present"),
                port=dict(type="int"),
                security=dict(type="str", choices=["tls", "stls", "plain"], default="tls"),
                interval=dict(type="int", default=30),
                keep=dict(type="bool", default=True),
                delete_after=dict(type="int", default=0),
                max_size=dict(type="int", default=0),
            ),
        ),
    )


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("port", "sim")],
        required_one_of=[("port", "sim")],
        supports_check_mode=True,
    )
    if not HAS_POCKETPOST:
        module.fail_json(msg=missing_required_lib("pocketpost (pip install pocketpost)"))

    params = {key: module.params[key] for key in argument_spec()}
    timeout = params.pop("timeout")
    try:
        spec = board_from_params(params)
    except InventoryError as e:
        module.fail_json(msg="; ".join(e.errors))

    result = apply_board(spec, check=module.check_mode, timeout=timeout)
    items = [dict(item=i.name, status=i.status, message=i.message) for i in result.items]
    output = dict(changed=result.changed, items=items, reboot_required=bool(result.reboot_keys))
    if module._diff:
        output["diff"] = [
            dict(
                before_header=f"{result.name}: {i.name}",
                after_header=f"{result.name}: {i.name}",
                before="".join(line + "\n" for line in i.before),
                after="".join(line + "\n" for line in i.after),
            )
            for i in result.items
            if i.status == CHANGED and i.before is not None
        ]
    if result.unreachable is not None:
        module.fail_json(msg=f"unreachable: {result.unreachable}", **output)
    failed = [i for i in result.items if i.status == FAILED]
    if failed:
        module.fail_json(msg="; ".join(f"{i.name}: {i.message}" for i in failed), **output)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
