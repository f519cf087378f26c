"""What a user of the build roles relies on, checked on every test host."""

import json

OPENSSL = "/usr/local/openssl"
NGINX = "/usr/local/nginx/sbin/nginx"
P11_KIT = "/usr/local/p11-kit"
RECORDS = "/var/lib/kmstls/builds"


def libdir(host):
    return "lib64" if host.system_info.distribution in ("centos", "redhat", "rocky", "almalinux") else "lib"


def test_openssl_is_the_pinned_release(host):
    out = host.check_output(OPENSSL + "/bin/openssl version")
    assert out.startswith("OpenSSL 1.1.1w "), out


def test_openssl_stays_out_of_the_global_loader_path(host):
    # No ld.so.conf entry, no LD_LIBRARY_PATH: programs find it through RUNPATH only.
    assert OPENSSL not in host.check_output("ldconfig -p")
    assert OPENSSL not in host.check_output("cat /etc/ld.so.conf /etc/ld.so.conf.d/* 2>/dev/null || true")


def test_nginx_reports_the_collections_openssl(host):
    out = host.run(NGINX + " -V").stderr
    assert "nginx version: nginx/1.26.3" in out
    assert "built with OpenSSL 1.1.1w" in out
    # nginx prints "running with" only when the runtime library differs from the build one.
    assert "running with" not in out


def test_nginx_is_minimal_with_ssl_http2_and_threads(host):
    out = host.run(NGINX + " -V").stderr
    for wanted in ("--with-http_ssl_module", "--with-http_v2_module", "--with-threads"):
        assert wanted in out
    for unwanted in ("--without-http_fastcgi_module", "--without-http_uwsgi_module",
                     "--without-http_ssi_module", "--without-http_autoindex_module"):
        assert unwanted in out


def test_nginx_links_libssl_through_runpath(host):
    lib = "%s/%s" % (OPENSSL, libdir(host))
    ldd = host.check_output("ldd " + NGINX)
    assert "libssl.so.1.1 => %s/libssl.so.1.1" % lib in ldd
    assert "libcrypto.so.1.1 => %s/libcrypto.so.1.1" % lib in ldd
    dynamic = host.check_output("readelf -d " + NGINX)
    assert "(RUNPATH)" in dynamic and "[%s]" % lib in dynamic
    # and it still works with an empty environment
    assert host.run("env -i %s -v" % NGINX).rc == 0


def test_engine_is_installed_where_the_collections_openssl_looks(host):
    engines = "%s/%s/engines-1.1" % (OPENSSL, libdir(host))
    assert host.file(engines + "/pkcs11.so").is_file
    out = host.check_output(OPENSSL + "/bin/openssl engine -t pkcs11")
    assert "[ available ]" in out


def test_engine_runs_against_the_collections_libcrypto_only(host):
    # LD_DEBUG lists every library the loader initialises while the engine loads.
    cmd = host.run("LD_DEBUG=libs %s/bin/openssl engine -t pkcs11" % OPENSSL)
    assert cmd.rc == 0
    inits = [line for line in cmd.stderr.splitlines() if "calling init:" in line]
    crypto = [line.split("calling init:")[1].strip() for line in inits if "libcrypto" in line]
    assert crypto == ["%s/%s/libcrypto.so.1.1" % (OPENSSL, libdir(host))], crypto
    assert any("engines-1.1/pkcs11.so" in line for line in inits)


def test_p11_kit_proxy_module_is_installed(host):
    assert host.file(P11_KIT + "/lib/p11-kit-proxy.so").exists
    assert "Version: 0.26.5" in host.file(P11_KIT + "/lib/pkgconfig/p11-kit-1.pc").content_string
    assert host.run(P11_KIT + "/bin/p11-kit list-modules").rc == 0


def test_nginx_accepts_its_installed_default_config(host):
    cmd = host.run(NGINX + " -t")
    assert cmd.rc == 0, cmd.stderr
    assert "test is successful" in cmd.stderr


def test_every_build_is_recorded_with_a_fingerprint(host):
    for name in ("openssl", "p11_kit", "nginx"):
        record = json.loads(host.file("%s/%s.json" % (RECORDS, name)).content_string)
        assert len(record["fingerprint"]) == 64
        assert record["inputs"]["name"] == name
    nginx = json.loads(host.file(RECORDS + "/nginx.json").content_string)
    openssl = json.loads(host.file(RECORDS + "/openssl.json").content_string)
    assert nginx["inputs"]["depends"]["openssl"] == openssl["fingerprint"]


def test_archives_stay_on_the_host_but_built_trees_and_their_test_keys_do_not(host):
    # OpenSSL's tree holds test private keys that secret scanners report.
    assert host.file("/usr/local/src/kmstls/openssl-1.1.1w.tar.gz").exists
    for tree in ("openssl-1.1.1w", "p11-kit-0.26.5", "nginx-1.26.3"):
        assert not host.file("/usr/local/src/kmstls/" + tree).exists
    log = host.file("/var/log/kmstls/build-nginx.log").content_string
    assert "### step configure:" in log and "### step install:" in log
