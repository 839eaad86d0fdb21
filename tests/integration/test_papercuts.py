"""Small things a new user meets first, each through the binary: an unquoted mode, a world-readable
mode, a misspelt region, an ARN from another region, and a metadata service that never answers
(one warning with what to check, not one per attempt)."""

import pytest

from conftest import aws_manifest


def test_an_unquoted_mode_says_to_quote_it(moto, imds, outdir, name, bootsecrets):
    for written in ["0400", "400"]:
        m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}])
        m = m.replace('ref = ', f'mode = {written}\nref = ', 1)
        r = bootsecrets(m, command="check")
        assert r.code == 2, r
        assert 'A mode is a quoted octal string: write mode = "0400", not mode = 0400' in \
            r.stderr, (written, r.stderr)


def test_a_world_readable_mode_says_how_to_grant_a_reader(moto, imds, outdir, name, bootsecrets):
    r = bootsecrets(aws_manifest(outdir, imds, moto,
                                 [{"path": "ca.crt", "ref": f"{name}/a", "mode": "0444"}]),
                    command="check")
    assert r.code == 2, r
    assert "mode `0444` grants access to other users" in r.stderr, r.stderr
    assert 'give it that consumer\'s group (`group = "NAME"`, mode "0440")' in r.stderr, r.stderr
    assert "settings.root_group" in r.stderr, r.stderr


@pytest.mark.parametrize("region,want", [
    ("eu-wset-1", "did you mean `eu-west-1`?"),
    ("ap-southest-2", "did you mean `ap-southeast-2`?"),
])
def test_a_misspelt_region_is_refused_with_the_likely_one(moto, imds, outdir, name, bootsecrets,
                                                          region, want):
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}],
                                 region=region), command="check")
    assert r.code == 2 and f"region `{region}` is not an AWS region name" in r.stderr \
        and want in r.stderr, r.stderr


def test_an_arn_from_another_region_is_refused(moto, imds, outdir, name, bootsecrets):
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf"
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": arn}],
                                 region="us-east-1"), command="check")
    assert r.code == 2, r
    assert ("`ref` is the ARN of a secret in region eu-west-1, but this backend reads region "
            "us-east-1 (from region)") in r.stderr, r.stderr
    # The same region, or another account (a resource policy may allow it), is fine.
    ok = "arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/db-AbCdEf"
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": ok}],
                                 region="us-east-1"), command="check")
    assert "is the ARN of a secret in region" not in r.stderr, r.stderr


def test_a_metadata_service_that_never_answers_is_one_warning_with_what_to_check(
        moto, imds_factory, outdir, name, bootsecrets):
    imds = imds_factory(listen_after=3600)
    m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}],
                     settings="deadline_seconds = 6")
    r = bootsecrets(m)
    assert r.code == 3, r
    warnings = [line for line in r.stderr.splitlines() if "not reachable yet" in line
                and "retrying in" in line]
    assert len(warnings) == 1, r.stderr
    assert "the same cause again is logged only with -v" in warnings[0], warnings
    assert "HttpPutResponseHopLimit" in r.stderr and "HttpEndpoint=enabled" in r.stderr, r.stderr
    # Every attempt is still there at -v.
    r = bootsecrets(m, "-v")
    assert r.code == 3, r
    repeats = [line for line in r.stderr.splitlines() if "not reachable yet" in line
               and "retrying in" in line]
    assert len(repeats) >= 3, r.stderr
