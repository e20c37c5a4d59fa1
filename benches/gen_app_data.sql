-- A SaaS application database with realistic entropy, for the backup benchmark:
-- random names and emails, uuids, JSON event payloads, prose from a word list.
-- Not pgbench's padding (which zstd squeezes 28x): this compresses about 3x.
-- Usage: psql -v scale=10 -f benches/gen_app_data.sql   (scale 10 ≈ 1 GiB)
\set ON_ERROR_STOP 1
SET synchronous_commit = off;

-- One random element of an array, drawn anew for every row.
CREATE FUNCTION pg_temp.pick(a text[]) RETURNS text VOLATILE LANGUAGE sql
  AS 'SELECT a[1 + floor(random() * array_length(a, 1))::int]';
-- n random words of the array.
CREATE FUNCTION pg_temp.prose(a text[], n int) RETURNS text VOLATILE LANGUAGE sql
  AS 'SELECT string_agg(a[1 + floor(random() * array_length(a, 1))::int], '' '') FROM generate_series(1, n)';

CREATE TEMP TABLE lists AS SELECT
  '{james,mary,robert,patricia,john,jennifer,michael,linda,david,elizabeth,william,barbara,richard,susan,joseph,jessica,thomas,sarah,chris,karen,daniel,lisa,matthew,nancy,anthony,betty,mark,sandra,donald,ashley,steven,kimberly,paul,emily,andrew,donna,joshua,michelle,kenneth,carol,kevin,amanda,brian,melissa,george,deborah,timothy,stephanie,ronald,rebecca,jason,sharon,edward,laura,jeffrey,cynthia,ryan,amy,jacob,kathleen,gary,angela,nicholas,helen,eric,anna,jonathan,brenda,stephen,pamela,larry,emma,justin,nicole,scott,samantha,brandon,katherine,benjamin,christine,samuel,debra,gregory,rachel,alexander,carolyn,frank,janet,patrick,maria,raymond,olivia,jack,heather,dennis,diane,jerry,julie}'::text[] AS first,
  '{smith,johnson,williams,brown,jones,garcia,miller,davis,rodriguez,martinez,hernandez,lopez,gonzalez,wilson,anderson,thomas,taylor,moore,jackson,martin,lee,perez,thompson,white,harris,sanchez,clark,ramirez,lewis,robinson,walker,young,allen,king,wright,scott,torres,nguyen,hill,flores,green,adams,nelson,baker,hall,rivera,campbell,mitchell,carter,roberts,gomez,phillips,evans,turner,diaz,parker,cruz,edwards,collins,reyes,stewart,morris,morales,murphy,cook,rogers,gutierrez,ortiz,morgan,cooper,peterson,bailey,reed,kelly,howard,ramos,kim,cox,ward,richardson,watson,brooks,chavez,wood,james,bennett,gray,mendoza,ruiz,hughes,price,alvarez,castillo,sanders,patel,myers,long,ross,foster,jimenez}'::text[] AS last,
  '{gmail.com,yahoo.com,outlook.com,hotmail.com,icloud.com,proton.me,example.org,acme.io,globex.com,initech.net,umbrella.co,hooli.com,piedpiper.com,stark.dev,wayne.biz}'::text[] AS domains,
  '{page_view,login,logout,export,invite_sent,invite_accepted,file_upload,file_download,comment,payment,refund,settings_changed,api_call,search,share}'::text[] AS kinds,
  '{Mozilla/5.0 (Windows NT 10.0; Win64; x64),Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1),Mozilla/5.0 (X11; Linux x86_64),Mozilla/5.0 (iPhone; CPU iPhone OS 17_0),curl/8.4.0,python-requests/2.31}'::text[] AS agents,
  regexp_split_to_array('the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were her she there been one all we their has would when if so no will more can out up about into them some could time these two may then do first any my now such like our over me even most made after also did many before must through back years where much your way well down should because each just those people how too little state good very make world still own see men work long get here between both life being under never day same another know while last might us great old year off come since against go came right used take three', ' ') AS words;

CREATE TABLE users (
  id bigint PRIMARY KEY,
  uuid uuid NOT NULL,
  org_id int NOT NULL,
  email text NOT NULL,
  name text NOT NULL,
  created_at timestamptz NOT NULL,
  settings jsonb NOT NULL
);
INSERT INTO users
SELECT g, gen_random_uuid(), 1 + (random() * 9999)::int,
       f || '.' || l || (random() * 9999)::int || '@' || d,
       initcap(f) || ' ' || initcap(l),
       now() - random() * interval '1500 days',
       jsonb_build_object('locale', pg_temp.pick('{en-US,de-DE,fr-FR,es-ES,ja-JP}'),
                          'tz_offset', (random() * 24)::int - 12,
                          'newsletter', random() < 0.3)
FROM lists, generate_series(1, 100000 * :scale) g,
     LATERAL (SELECT pg_temp.pick(first) AS f, pg_temp.pick(last) AS l,
                     pg_temp.pick(domains) AS d, g AS row_no) n;

CREATE TABLE events (
  id bigint PRIMARY KEY,
  org_id int NOT NULL,
  user_id uuid NOT NULL,
  kind text NOT NULL,
  payload jsonb NOT NULL,
  created_at timestamptz NOT NULL
);
INSERT INTO events
SELECT g, 1 + (random() * 9999)::int, gen_random_uuid(),
       pg_temp.pick(kinds),
       jsonb_build_object(
         'ip', (random() * 223)::int + 1 || '.' || (random() * 255)::int || '.' || (random() * 255)::int || '.' || (random() * 255)::int,
         'agent', pg_temp.pick(agents),
         'amount', round((random() * 1000)::numeric, 2),
         'request_id', md5(random()::text),
         'path', '/' || pg_temp.pick(words) || '/' || (random() * 100000)::int),
       now() - random() * interval '400 days'
FROM lists, generate_series(1, 300000 * :scale) g;

CREATE TABLE documents (
  id bigint PRIMARY KEY,
  org_id int NOT NULL,
  title text NOT NULL,
  body text NOT NULL
);
INSERT INTO documents
SELECT g, 1 + (random() * 9999)::int,
       initcap(pg_temp.pick(words)) || ' ' || pg_temp.pick(words),
       pg_temp.prose(words, 220)
FROM lists, generate_series(1, 15000 * :scale) g;

VACUUM ANALYZE users, events, documents;
