"""Fixed known-answer vectors for the self-tests (public keys and signatures only).

Generated once with ``cryptography``; the private keys were discarded. The
SHA-2 digests are the FIPS 180-4 examples for "abc".
"""

MESSAGE = b"appliance known-answer test vector v1"

SHA_ABC = {
    "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    "sha384": (
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
        "8086072ba1e7cc2358baeca134c825a7"
    ),
    "sha512": (
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    ),
}

EC_P256_SPKI = bytes.fromhex(
    "3059301306072a8648ce3d020106082a8648ce3d0301070342000455738f7640476f52d87ccf71916cf9e63b"
    "52f2204c58b859da851b4e775bab5d3e92b2f9aad726772f39d0bca3ea175f166abc5e44e15dee58730c84da"
    "e9385b"
)

EC_P256_SIG = bytes.fromhex(
    "304402201136291641c02f2dfa42b13520fbab3672b3be534b6847e28a8116c70a989e8d02200112c19d2265"
    "a35cf44768d52ad1dc5d75c9c495df1c7e87c9677d9cec7e073f"
)

RSA_2048_SPKI = bytes.fromhex(
    "30820122300d06092a864886f70d01010105000382010f003082010a0282010100c174a22a010f9002c9cb47"
    "49051380911c37ca4791a77363a13f2d3bea9d7c4c340fa119a31a0c3d3378ce2ec2c9f23a37db7e14b1cd2b"
    "aa0d99d512d1816f01aa5f6bcfbe19e1135f572a073258f08c7032820f0c3a2a9ac25e31ee6cce5629ca76c8"
    "048e8d24ae36d5cc13760f97a3fc9a4741f45d390a215e165bc2766da728146a630c7d937c536e15fe812f23"
    "29aa191b5057dea74cc183a695cbd568ae95c089d5335d65bd14c46f295047e4aa1aaabd82f3507269eba2f5"
    "0d85c9d6aecf26d53e0808752d4512e28225b4d29a5eaa1e0bf21026f2ff531a5063116230fca0e4708679e4"
    "29e4dd6de65e18ca17eb3454573cb33e1733460decbae271c50203010001"
)

RSA_PKCS1_SHA256_SIG = bytes.fromhex(
    "472d02d7652060708d106af9144cd9e5e18e0e488e500d4047400cf0cf9eea3bdaead3dff19bb3651d64871a"
    "ee857c0cd9d32ceba2736e6c353d3579eef776413df1d3c52358108dd6101d4a6c555b08dd9552c669741779"
    "2813bca182bd9ddb82e66fc82a853658f0341acc0c7634f40a07cec3edc34fb5894d20694760e377fac85ba9"
    "60e8a07b6ec054cced1667fab37bf5a993f4727ff125c1aaee0ec187fee81a6fa706d798f803bb39993b8bcf"
    "26393d4e2e03b97208f7f93c42e1c94ff70ad4baf8cb1882f5e06bcbc9317472c6bc9b9b796f6a631c7321db"
    "048e17037be91e3d2bef9c51903ee7afd3ea0f7c4c49200b6ee944e1c4d1311c71dec379"
)

RSA_PSS_SHA256_SIG = bytes.fromhex(
    "29c56218f52ba358c7eab97f5decb77b2312cfa655763a21916b73ac408f93f5267e47e8b3d985667d1ec79f"
    "639fb9cdcd0c89a038b0ae7f5a37ec10961f743fc2bb4f70e25308f1974b88e2d38d5d4538f8393a600d4f47"
    "2b634bb4b0feddb5731cc6381ce224aed60c1e26f4fafabfc83c996c57e7138ef4a60fe22b228d2310836a1d"
    "3dbf17840d29350455c7b83f30fa48a113164822817052822a9a5d5a196d95f7b6fd809975b8f33561ed3bdb"
    "aeb03a7ab946cdb3b1da9c67b8d59faea90f6c055c4068d79df662737c945c68da275924779df6ba143d7441"
    "f5696c8f94f5e50be54a2706d6f1a20f6bc9fab5273f3e0c4dc227add1041533394f91cf"
)

# HMAC: RFC 4231 test case 2 (key "Jefe"), the published digests for SHA-256/384/512.
HMAC_KEY = b"Jefe"
HMAC_DATA = b"what do ya want for nothing?"
HMAC_RFC4231_TC2 = {
    "sha256": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    "sha384": (
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
        "8e2240ca5e69e2c78b3239ecfab21649"
    ),
    "sha512": (
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
    ),
}

# AES-256-GCM: test case 14 of the GCM specification (McGrew and Viega, the example NIST
# publishes with SP 800-38D): all-zero 256-bit key, 96-bit IV and one block of plaintext.
AES256_GCM_KEY = bytes(32)
AES256_GCM_IV = bytes(12)
AES256_GCM_PLAINTEXT = bytes(16)
AES256_GCM_CIPHERTEXT = bytes.fromhex("cea7403d4d606b6e074ec5d3baf39d18")
AES256_GCM_TAG = bytes.fromhex("d0d1c8a799996bf0265b98b5d48ab919")
