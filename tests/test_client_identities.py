"""Which principal a client certificate is (client_identities.py), as a table: the
matching rules, the default role, revocation, and the file's checks."""

from __future__ import annotations

import pytest

from keyturn_server.client_identities import (
    CertificateNames,
    ClientIdentitiesError,
    NameKind,
    parse,
)
from keyturn_server.domain.access import Role
from keyturn_server.domain.errors import Unauthenticated

FILE = """
[[identity]]
name = "billing"
role = "service"
uri = "spiffe://prod.example/ns/billing/sa/*"

[[identity]]
name = "ops"
role = "operator"
dns = "*.ops.example"

[[identity]]
name = "legacy"
role = "auditor"
cn = "legacy batch *"

[[identity]]
name = "gone"
role = "service"
uri = "spiffe://prod.example/ns/gone/sa/api"
revoked = true
"""


@pytest.mark.parametrize(
    ("names", "principal", "role"),
    [
        (
            CertificateNames(uris=("spiffe://prod.example/ns/billing/sa/api",)),
            "billing",
            Role.SERVICE,
        ),
        (CertificateNames(dns=("console.ops.example",)), "ops", Role.OPERATOR),
        (CertificateNames(common_name="legacy batch 7"), "legacy", Role.AUDITOR),
        # Several names: the first entry that matches any of them decides.
        (
            CertificateNames(
                dns=("x.ops.example",), uris=("spiffe://prod.example/ns/billing/sa/a",)
            ),
            "billing",
            Role.SERVICE,
        ),
    ],
)
def test_a_certificate_maps_to_the_first_matching_entry(
    names: CertificateNames, principal: str, role: Role
) -> None:
    found = parse(FILE, "f").principal(names, "peer")
    assert (found.name, found.role, found.via) == (principal, role, "mtls")


@pytest.mark.parametrize(
    "names",
    [
        CertificateNames(uris=("spiffe://prod.example/ns/billing/sa/api/extra",)),  # 2 segments
        CertificateNames(uris=("spiffe://prod.example/ns/billing/sa/",)),
        CertificateNames(dns=("a.b.ops.example",)),  # '*' is one label
        CertificateNames(dns=("ops.example",)),
        CertificateNames(common_name="admin"),
        CertificateNames(uris=("SPIFFE://prod.example/ns/billing/sa/api",)),  # exact case
        CertificateNames(),
    ],
)
def test_other_certificates_are_refused_without_a_default(names: CertificateNames) -> None:
    with pytest.raises(Unauthenticated) as raised:
        parse(FILE, "f").principal(names, "peer")
    assert raised.value.reason == "UNKNOWN_CLIENT_CERTIFICATE"


@pytest.mark.parametrize(
    ("names", "principal"),
    [
        (
            CertificateNames(uris=("spiffe://x/y",), dns=("h.example",), common_name="c"),
            "uri:spiffe://x/y",
        ),
        (CertificateNames(dns=("h.example",), common_name="admin"), "dns:h.example"),
        (CertificateNames(common_name="admin"), "cn:admin"),
    ],
)
def test_the_default_role_names_its_principal_by_kind(
    names: CertificateNames, principal: str
) -> None:
    found = parse('default_role = "auditor"\n' + FILE, "f").principal(names, "")
    assert (found.name, found.role) == (principal, Role.AUDITOR)


def test_a_revoked_principal_is_refused_even_with_a_default_role() -> None:
    names = CertificateNames(uris=("spiffe://prod.example/ns/gone/sa/api",))
    with pytest.raises(Unauthenticated) as raised:
        parse('default_role = "service"\n' + FILE, "f").principal(names, "")
    assert raised.value.reason == "CLIENT_CERTIFICATE_REVOKED"


def test_glob_characters_other_than_the_star_are_literal() -> None:
    identities = parse('[[identity]]\nname = "a"\nrole = "service"\ndns = "a?.[b].example"\n', "f")
    assert identities.identities[0].kind is NameKind.DNS
    assert identities.principal(CertificateNames(dns=("a?.[b].example",)), "").name == "a"
    with pytest.raises(Unauthenticated):
        identities.principal(CertificateNames(dns=("ax.b.example",)), "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("identity = 3", "array of tables"),
        ("[[identity]]\nname = 'a'\nrole = 'service'\ncn = ''\n", "must be a name"),
        ("[[identity]]\nname = 'a'\nrole = 'service'\ndns = '**'\n", "match anything"),
        (
            "[[identity]]\nname = 'a'\nrole = 'service'\ncn = 'a'\nrevoked = 'yes'\n",
            "true or false",
        ),
        ("[[identity]]\nname = 'a'\nrole = 'service'\ncn = 7\n", "must be a name"),
        ("extra = 1\n", "unknown key 'extra'"),
        ('[[identity]]\nname = "a\\n"\nrole = "service"\ncn = "a"\n', "name must be"),
        # The server's own principal: its audit entries would be the server's.
        ('[[identity]]\nname = "keyturn"\nrole = "admin"\ncn = "ops"\n', "reserved"),
        ('[[identity]]\nname = "anonymous"\nrole = "admin"\ncn = "ops"\n', "reserved"),
    ],
)
def test_the_file_is_checked_whole(text: str, message: str) -> None:
    with pytest.raises(ClientIdentitiesError, match=message):
        parse(text, "identities.toml")
